// An HDF5 virtual file driver over distckpt's Env: HDF5's own reads and writes of a file (its
// superblock, object headers, B-trees) go through the same Env as the tensor bytes, so tests can
// fail any of them and every error names the file.
#pragma once

#include <hdf5.h>

#include <string>

#include "distckpt/env.h"

namespace distckpt {

// Receives the first Env error of the files opened through a file access list made by
// MakeEnvFapl, so that the caller reports it instead of HDF5's generic message.
struct EnvDriverErrors {
  Status first;
};

// A file access property list (the caller closes it) whose files are opened, read, written,
// sized and closed through `env`. `errors` receives the first error (a failed close is reported
// only there) and must outlive the files.
hid_t MakeEnvFapl(Env* env, EnvDriverErrors* errors);

}  // namespace distckpt
