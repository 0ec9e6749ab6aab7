// Reading and writing a checkpoint's manifest files through an Env.
//
// `manifest.h5` is the index (see manifest.h); beside it `manifest.xxh3` holds the xxh3 of
// manifest.h5's bytes, so that any flipped bit in it is caught before HDF5 parses it. Both are
// written under temporary names, fsynced and renamed (the sum first), so a manifest without its
// sum is never visible. Not thread-safe (HDF5).
#pragma once

#include <string>

#include "distckpt/manifest.h"
#include "distckpt/status.h"

namespace distckpt {

class Env;

// Writes `dir`/manifest.h5 and its sum. On failure nothing is renamed into place.
Status WriteManifest(Env* env, const std::string& dir, const Manifest& manifest);
// Reads, checks and validates `dir`/manifest.h5; errors name the file and what is wrong with it.
// `env` nullptr: Env::Default().
Result<Manifest> ReadManifest(const std::string& dir, Env* env = nullptr);

}  // namespace distckpt
