// The steps of a save shared by the persistent and the local tier (save.cc, local_tier.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "distckpt/env.h"
#include "distckpt/manifest.h"
#include "distckpt/options.h"
#include "distckpt/tree.h"
#include "plan/plan.h"

namespace distckpt {

std::string RandomNonce();
// A save's temporary directory, locked (shared) while the save writes it: leftovers of other
// saves are removed only when nobody holds their lock, so `distckpt gc` or another process's
// retention never removes a save in progress. The lock is best effort (nullptr where the file
// system has no locks).
struct TmpDir {
  std::string name;
  std::unique_ptr<FileLock> in_use;
};
// Clears leftovers of saves that never committed under `root` and creates the temporary
// directory.
Result<TmpDir> PrepareTmpDir(Env* env, const std::string& root, int64_t step);
// The same with the name chosen by the caller (every host of the local tier uses one name).
Result<TmpDir> PrepareNamedTmpDir(Env* env, const std::string& root, const std::string& name);
// Removes the temporary directory `dir` of a save unless a save in progress holds it (kAborted).
Status RemoveLeftover(Env* env, const std::string& dir);
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
