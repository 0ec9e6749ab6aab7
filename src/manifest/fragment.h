// The manifest on the wire, in a compact binary encoding (JSON is for files; parsing it on every
// rank dominated loads of many small tensors):
// - fragments: what one rank wrote (its shard records and file record), sent to rank 0, which
//   merges every rank's fragment into the manifest it commits;
// - the whole manifest, which rank 0 reads and validates once and broadcasts.
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

// The whole manifest; DecodeManifestWire trusts its sender to have validated it.
std::string EncodeManifestWire(const Manifest& manifest);
Result<Manifest> DecodeManifestWire(const std::string& bytes);

}  // namespace distckpt
