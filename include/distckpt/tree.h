// StateTree: the checkpoint as a tree of named leaves, like Python's checkpoint dict.
//
// Keys are '/'-joined paths ("model_state_dict/fc1.weight"). Leaves are tensors or scalars
// (int, double, bool, string, and lists of those). Each tensor carries its placement on this
// rank: replicated (every rank holds the whole tensor), sharded by rows (this rank holds rows
// [offset, offset + local rows) of a global tensor) or sharded flat (this rank holds elements
// [offset, offset + local numel) of the flattened global tensor, as ZeRO does).
// The tree references the caller's tensors; it does not copy them. Thread-compatible.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace distckpt {

enum class PlacementKind { kReplicated = 0, kShardedRows = 1, kShardedFlat = 2 };

const char* PlacementName(PlacementKind kind);

struct TensorEntry {
  at::Tensor tensor;  // this rank's data (CPU or CUDA)
  PlacementKind placement = PlacementKind::kReplicated;
  std::vector<int64_t> global_shape;  // the whole tensor's shape
  int64_t offset = 0;                 // first row (rows) or first element (flat) held here
};

using ScalarValue = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>,
                                 std::vector<double>, std::vector<std::string>>;

class StateTree {
 public:
  // Every rank holds the whole tensor.
  void SetTensor(const std::string& path, const at::Tensor& tensor);
  // This rank holds rows [start_row, start_row + tensor.size(0)) of a tensor of global_shape.
  void SetShardedRows(const std::string& path, const at::Tensor& tensor,
                      std::vector<int64_t> global_shape, int64_t start_row);
  // This rank holds flat elements [start, start + tensor.numel()) of a tensor of global_shape.
  void SetShardedFlat(const std::string& path, const at::Tensor& tensor,
                      std::vector<int64_t> global_shape, int64_t start);
  void SetScalar(const std::string& path, ScalarValue value);

  bool HasTensor(const std::string& path) const { return tensors_.count(path) > 0; }
  bool HasScalar(const std::string& path) const { return scalars_.count(path) > 0; }
  const TensorEntry& tensor(const std::string& path) const;
  const ScalarValue& scalar(const std::string& path) const;
  int64_t GetInt(const std::string& path) const;
  double GetDouble(const std::string& path) const;

  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  std::map<std::string, TensorEntry>& mutable_tensors() { return tensors_; }
  const std::map<std::string, ScalarValue>& scalars() const { return scalars_; }
  std::map<std::string, ScalarValue>& mutable_scalars() { return scalars_; }

 private:
  std::map<std::string, TensorEntry> tensors_;
  std::map<std::string, ScalarValue> scalars_;
};

// "[2, 3]": a shape as error messages and tools print it.
std::string ShapeString(const std::vector<int64_t>& shape);

// A scalar as tools print it: 3, 0.125, true, "text", [1, 2].
std::string ScalarText(const ScalarValue& value);

// "float32", "bfloat16", ... as Python torch spells them; "" for unsupported dtypes.
std::string DtypeName(at::ScalarType dtype);
// Inverse of DtypeName; returns false for names that are not supported.
bool DtypeFromName(const std::string& name, at::ScalarType* dtype);

}  // namespace distckpt
