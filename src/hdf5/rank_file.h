// HDF5 rank files: structure through the HDF5 library, data through Env.
//
// A rank file holds one contiguous, early-allocated dataset per shard, so every dataset's
// data has a fixed byte offset right after creation. distckpt writes and reads the data at
// those offsets with plain pwrite/pread through Env (fault-injectable, no HDF5 copies), and the
// result is still an ordinary HDF5 file that h5py and h5dump read. Not thread-safe: the HDF5
// build has no thread safety, so keep all calls on one thread per process.
#pragma once

#include <c10/core/ScalarType.h>
#include <hdf5.h>

#include <string>
#include <vector>

#include "distckpt/env.h"
#include "distckpt/status.h"

namespace distckpt {

// The HDF5 type that stores `dtype` (h5py conventions: IEEE half, bfloat16 as a 2-byte float
// with 8 exponent bits, bool as an int8 enum FALSE/TRUE). The caller closes it.
hid_t MakeHdf5Type(at::ScalarType dtype);

struct DatasetRequest {
  std::string name;  // '/'-separated; intermediate groups are created
  at::ScalarType dtype = at::ScalarType::Float;
  std::vector<int64_t> shape;
};

// Creates `path` (truncating) with one dataset per request; returns each data byte offset.
// HDF5 reads and writes it through `env` (hdf5/env_driver.h).
Result<std::vector<uint64_t>> CreateRankFile(Env* env, const std::string& path,
                                             const std::vector<DatasetRequest>& datasets);

// Silences HDF5's automatic error stack printing; errors are reported as Status instead.
void QuietHdf5Errors();

}  // namespace distckpt
