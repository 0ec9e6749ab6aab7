#include "distckpt/tree.h"

#include <cstdio>
#include <stdexcept>

#include "core/dtype.h"
#include "distckpt/status.h"

namespace distckpt {

const char* PlacementName(PlacementKind kind) {
  switch (kind) {
    case PlacementKind::kReplicated:
      return "replicated";
    case PlacementKind::kShardedRows:
      return "sharded_rows";
    case PlacementKind::kShardedFlat:
      return "sharded_flat";
  }
  return "unknown";
}

void StateTree::SetTensor(const std::string& path, const at::Tensor& tensor) {
  tensors_[path] = TensorEntry{tensor, PlacementKind::kReplicated, tensor.sizes().vec(), 0};
}

void StateTree::SetShardedRows(const std::string& path, const at::Tensor& tensor,
                               std::vector<int64_t> global_shape, int64_t start_row) {
  if (tensor.dim() < 1 || global_shape.empty()) {
    throw Error(InvalidArgument("tensor '" + path + "': row sharding needs at least one dim"));
  }
  tensors_[path] =
      TensorEntry{tensor, PlacementKind::kShardedRows, std::move(global_shape), start_row};
}

void StateTree::SetShardedFlat(const std::string& path, const at::Tensor& tensor,
                               std::vector<int64_t> global_shape, int64_t start) {
  tensors_[path] = TensorEntry{tensor, PlacementKind::kShardedFlat, std::move(global_shape), start};
}

void StateTree::SetScalar(const std::string& path, ScalarValue value) {
  scalars_[path] = std::move(value);
}

const TensorEntry& StateTree::tensor(const std::string& path) const {
  auto it = tensors_.find(path);
  if (it == tensors_.end()) throw Error(NotFound("no tensor '" + path + "' in the tree"));
  return it->second;
}

const ScalarValue& StateTree::scalar(const std::string& path) const {
  auto it = scalars_.find(path);
  if (it == scalars_.end()) throw Error(NotFound("no scalar '" + path + "' in the tree"));
  return it->second;
}

int64_t StateTree::GetInt(const std::string& path) const {
  const ScalarValue& v = scalar(path);
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  if (auto* d = std::get_if<double>(&v)) return static_cast<int64_t>(*d);
  throw Error(Mismatch("scalar '" + path + "' is not a number"));
}

double StateTree::GetDouble(const std::string& path) const {
  const ScalarValue& v = scalar(path);
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  throw Error(Mismatch("scalar '" + path + "' is not a number"));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string ScalarText(const ScalarValue& value) {
  char buf[64];
  if (auto* i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (auto* d = std::get_if<double>(&value)) {
    std::snprintf(buf, sizeof(buf), "%.9g", *d);
    return buf;
  }
  if (auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  if (auto* s = std::get_if<std::string>(&value)) return "\"" + *s + "\"";
  std::string out = "[";
  auto add = [&](const std::string& item) { out += (out.size() > 1 ? ", " : "") + item; };
  if (auto* il = std::get_if<std::vector<int64_t>>(&value)) {
    for (int64_t x : *il) add(std::to_string(x));
  } else if (auto* dl = std::get_if<std::vector<double>>(&value)) {
    for (double x : *dl) add(ScalarText(x));
  } else if (auto* sl = std::get_if<std::vector<std::string>>(&value)) {
    for (const auto& x : *sl) add("\"" + x + "\"");
  }
  return out + "]";
}

std::string DtypeName(at::ScalarType dtype) {
  const DtypeInfo* d = FindDtype(dtype);
  return d ? d->name : "";
}

bool DtypeFromName(const std::string& name, at::ScalarType* dtype) {
  const DtypeInfo* d = FindDtypeByName(name);
  if (d) *dtype = d->dtype;
  return d != nullptr;
}

}  // namespace distckpt
