// Manifest fragments: what one rank wrote (its shard records and file record), sent to rank 0,
// which merges every rank's fragment into the manifest it commits.
#pragma once

#include <string>
#include <vector>

#include "distckpt/manifest.h"

namespace distckpt {

std::string EncodeFragment(const std::vector<TensorRecord>& records,
                           const std::vector<FileRecord>& files);

// Adds the shards and file records of fragments[r] (rank r's) to `manifest`, whose tensors are
// already listed, sorted by path. Shards end up sorted by element range. Fails naming the rank
// on an undecodable fragment or a shard of a tensor the manifest does not list.
Status MergeFragments(const std::vector<std::string>& fragments, Manifest* manifest);

}  // namespace distckpt
