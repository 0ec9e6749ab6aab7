// Two checkpoints compared tensor by tensor and scalar by scalar: whether a resume, a conversion
// or a re-sharding kept the state. Either side may have any rank count and any placements; the
// tensors are streamed in chunks, so memory stays a small multiple of DiffOptions::chunk_bytes.
// One plain process (no MPI); not collective. Every byte read is verified against its checksum.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "distckpt/env.h"
#include "distckpt/status.h"

namespace distckpt {

struct DiffOptions {
  // Elements a (first checkpoint) and b (second) count as equal when a == b, both are NaN, or
  // |a - b| <= atol + rtol * |b| (numpy.isclose). With both 0 only exact equality counts.
  double rtol = 0;
  double atol = 0;
  // Tensors and scalars whose path starts with one of these are left out (e.g. "rank_state/",
  // per-rank state whose shape follows the rank count).
  std::vector<std::string> exclude;
  int64_t chunk_bytes = 16 << 20;  // elements compared per round, in float64 bytes
  Env* env = nullptr;              // nullptr: Env::Default()
};

struct Difference {
  enum class Kind { kOnlyInA, kOnlyInB, kDtype, kShape, kValues, kScalar };
  Kind kind = Kind::kValues;
  std::string path;  // the tree path
  std::string a;     // what the first checkpoint holds: "float32 [10, 3]" or a scalar's value
  std::string b;
  // kValues: elements outside the tolerance, of numel, and the largest |a - b| and |a - b| / |b|.
  int64_t differing = 0;
  int64_t numel = 0;
  double max_abs = 0;
  double max_rel = 0;
};

struct DiffReport {
  int64_t tensors_compared = 0;  // tensors present in both with the same dtype and shape
  int64_t scalars_compared = 0;  // scalars present in both
  int64_t elements_compared = 0;
  double max_abs = 0;  // over every element compared, equal ones included
  double max_rel = 0;
  std::vector<Difference> differences;  // by path
  bool equal() const { return differences.empty(); }
};

// "only in A", "only in B", "dtype", "shape", "values", "scalar".
const char* DifferenceKindName(Difference::Kind kind);

// Errors (unreadable or damaged checkpoints) name the checkpoint, tensor and file.
Result<DiffReport> DiffCheckpoints(const std::string& a_dir, const std::string& b_dir,
                                   const DiffOptions& options = {});

}  // namespace distckpt
