// Pieces of the torch.save reader that other importers (PyTorch DCP) build on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "distckpt/env.h"
#include "distckpt/options.h"
#include "distckpt/status.h"
#include "distckpt/tree.h"
#include "pt/pickle.h"

namespace distckpt {

// Reads the torch.save archive (zip format) held in bytes [offset, offset + length) of `file`
// (one open file serves every range of it) and flattens its object into `tree` under `path` (a
// tensor, a number, a string, a container of them).
Status ReadPtObject(const std::shared_ptr<ReadableFile>& file, uint64_t offset, uint64_t length,
                    const std::string& path, StateTree* tree);

// A dict key as a part of a tree path: a string, or an int in decimal; never empty or with '/'.
// `where` names the dict in the error.
Result<std::string> PathPart(const PyValue& key, const std::string& where);

// The step an import is saved as: options.step, else the tree's "step" or "epoch", else 0.
int64_t ImportStep(const StateTree& tree, const ImportOptions& options);

}  // namespace distckpt
