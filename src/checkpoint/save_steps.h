// The steps of a save shared by the persistent and the local tier (save.cc, local_tier.cc).
#pragma once

#include <cstdint>
#include <string>

#include "distckpt/env.h"
#include "distckpt/manifest.h"
#include "distckpt/options.h"
#include "distckpt/tree.h"
#include "plan/plan.h"

namespace distckpt {

std::string RandomNonce();
// Clears leftovers of saves that never committed under `root` and creates the temporary
// directory; returns its name.
Result<std::string> PrepareTmpDir(Env* env, const std::string& root, int64_t step);
// The same with the name chosen by the caller (every host of the local tier uses one name).
Status PrepareNamedTmpDir(Env* env, const std::string& root, const std::string& name);
// The manifest without shards: one record per planned tensor, sorted by path.
Manifest ManifestSkeleton(const StateTree& tree, const SavePlan& plan, int64_t step, int world,
                          int64_t piece_bytes);
// Writes and fsyncs this rank's file of `plan` into `tmp_dir`; `fragment`: its shard table.
Status WriteShare(Env* env, const CheckpointerOptions& options, const std::string& tmp_dir,
                  int rank, double deadline, const StateTree& tree, const SavePlan& plan,
                  std::string* fragment, SaveStats* stats);
// Writes the manifest into `tmp_dir` and moves the directory into place (atomically replacing
// an earlier copy of the step); a move that cannot be made durable is undone.
Status Commit(Env* env, const std::string& root, const std::string& tmp_dir,
              const std::string& final_dir, const Manifest& manifest);

}  // namespace distckpt
