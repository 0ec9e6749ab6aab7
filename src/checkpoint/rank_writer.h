// One rank's part of a save: its rank file, written and fsynced, and the records of what it holds.
#pragma once

#include <string>
#include <vector>

#include "distckpt/env.h"
#include "distckpt/manifest.h"
#include "distckpt/options.h"
#include "distckpt/tree.h"
#include "plan/plan.h"

namespace distckpt {

struct RankFileJob {
  Env* env = nullptr;
  std::string dir;  // the temporary checkpoint directory
  int rank = 0;
  int64_t piece_bytes = 1 << 20;
  int64_t pack_below_bytes = 64 << 10;  // CheckpointerOptions::pack_below_bytes
  double deadline = 0;                  // MonotonicSeconds() after which writing gives up; 0: none
  // Tensors its engine handles (CUDA tensors) are copied out through a ring of host buffers
  // (gpu/staging.h) while earlier pieces are hashed and written. A tensor on a device no engine
  // handles is copied to the host whole.
  DeviceStaging staging;
};

// Writes plan.per_rank[job.rank] of `tree` into the rank file (HDF5 creates the structure; the
// tensor bytes go through the Env at the datasets' offsets), fsyncs it and appends one shard
// record per write and one file record. Writes nothing when the rank has nothing planned.
// Errors name the tensor, the file and the rank.
// Adds to stats->layout_seconds, write_seconds and bytes_written.
Status WriteRankFile(const RankFileJob& job, const StateTree& tree, const SavePlan& plan,
                     std::vector<TensorRecord>* shards, std::vector<FileRecord>* files,
                     SaveStats* stats);

}  // namespace distckpt
