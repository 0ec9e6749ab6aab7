// Helpers shared by the tests: scratch directories, value comparison, MPI-aware setup.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "distckpt/comm.h"

namespace distckpt::testing {

// The communicator of this test process (MPI when run under mpirun, local otherwise).
Communicator& Comm();

// A fresh directory, the same path on every rank (created by rank 0).
std::string ScratchDir(const std::string& name);

// Deterministic contents that differ per tensor and per element.
at::Tensor Pattern(at::IntArrayRef shape, at::ScalarType dtype, int64_t seed);

// Bitwise equality, dtype and shape included.
::testing::AssertionResult BitEqual(const at::Tensor& a, const at::Tensor& b);

// Flips one bit of a file at `offset`.
void FlipBit(const std::string& path, uint64_t offset, int bit = 0);

}  // namespace distckpt::testing
