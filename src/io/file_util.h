// Whole-file helpers over Env, for small files (the manifest and its checksum, sidecars).
#pragma once

#include <string>

#include "distckpt/env.h"

namespace distckpt {

// The Env an options struct or caller names, or Env::Default() for nullptr.
inline Env* EnvOrDefault(Env* env) { return env ? env : Env::Default(); }

// Creates (or truncates) `path`, writes `bytes` and fsyncs it. Errors name the file.
Status WriteFileDurably(Env* env, const std::string& path, const std::string& bytes);
// The whole content of `path`; `max_bytes` bounds what a damaged file can make us allocate.
Result<std::string> ReadWholeFile(Env* env, const std::string& path, uint64_t max_bytes);

}  // namespace distckpt
