// Validation of a manifest read from disk or received from another rank.
#pragma once

#include "distckpt/manifest.h"

namespace distckpt {

// Checks the format version, dtypes, shapes, checksum counts, that every tensor is covered by
// its shards exactly once, that tensors are sorted by path without duplicates, and that every
// file name stays inside the checkpoint directory. Errors (kCorrupt, kMismatch for a version
// this build does not read) name the tensor or file.
Status ValidateManifest(const Manifest& m);

}  // namespace distckpt
