// The last step of every import: a tree read from another format committed as a checkpoint.
#pragma once

#include <cstdint>
#include <string>

#include "distckpt/copy_engine.h"
#include "distckpt/env.h"
#include "distckpt/status.h"
#include "distckpt/tree.h"

namespace distckpt {

// Saves `tree` as checkpoint `step` under `root` from this one process; returns its directory.
// With `source`, the tensors it Handles() are read from it piece by piece through a small ring
// of buffers (an import that hands the save one tensor at a time).
Result<std::string> CommitImport(const StateTree& tree, const std::string& root, int64_t step,
                                 Env* env, CopyEngine* source = nullptr);

}  // namespace distckpt
