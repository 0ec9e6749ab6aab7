#include "plan/describe.h"

#include <algorithm>

#include "core/bytes.h"
#include "core/status_macros.h"

namespace distckpt {

namespace {

// The flat element range `entry` holds, checked against its global shape.
Status DescribeEntry(const std::string& path, const TensorEntry& entry, LocalTensorInfo* out) {
  const std::string where = "tensor '" + path + "'";
  if (!entry.tensor.defined()) return InvalidArgument(where + " is undefined");
  LocalTensorInfo info;
  info.path = path;
  info.dtype = entry.tensor.scalar_type();
  if (DtypeName(info.dtype).empty()) {
    return InvalidArgument(where + " has unsupported dtype " +
                           std::string(c10::toString(info.dtype)));
  }
  info.placement = entry.placement;
  info.global_shape = entry.global_shape;
  const int64_t global_numel = NumElements(entry.global_shape);
  const int64_t local_numel = entry.tensor.numel();
  switch (entry.placement) {
    case PlacementKind::kReplicated:
      if (entry.tensor.sizes().vec() != entry.global_shape) {
        return InvalidArgument(where + ": replicated tensor's shape differs from its global shape");
      }
      info.flat_start = 0;
      info.flat_count = local_numel;
      break;
    case PlacementKind::kShardedRows: {
      const int64_t row = RowElements(entry.global_shape);
      const auto local_shape = entry.tensor.sizes().vec();
      if (local_shape.size() != entry.global_shape.size() ||
          !std::equal(local_shape.begin() + 1, local_shape.end(), entry.global_shape.begin() + 1)) {
        return InvalidArgument(where + ": row shard's trailing dims differ from the global shape");
      }
      if (entry.offset < 0 || entry.offset + local_shape[0] > entry.global_shape[0]) {
        return InvalidArgument(where + ": rows [" + std::to_string(entry.offset) + ", " +
                               std::to_string(entry.offset + local_shape[0]) +
                               ") exceed the global " + std::to_string(entry.global_shape[0]));
      }
      info.flat_start = entry.offset * row;
      info.flat_count = local_numel;
      break;
    }
    case PlacementKind::kShardedFlat:
      if (entry.offset < 0 || entry.offset + local_numel > global_numel) {
        return InvalidArgument(where + ": elements [" + std::to_string(entry.offset) + ", " +
                               std::to_string(entry.offset + local_numel) + ") exceed the global " +
                               std::to_string(global_numel));
      }
      info.flat_start = entry.offset;
      info.flat_count = local_numel;
      break;
  }
  *out = std::move(info);
  return Status::Ok();
}

}  // namespace

Status DescribeLocal(const StateTree& tree, std::vector<LocalTensorInfo>* out) {
  out->reserve(out->size() + tree.tensors().size());
  for (const auto& [path, entry] : tree.tensors()) {
    LocalTensorInfo info;
    RETURN_IF_ERROR(DescribeEntry(path, entry, &info));
    out->push_back(std::move(info));
  }
  return Status::Ok();
}

namespace {

// Path, dtype, placement and global shape: what every rank must agree on.
void PutShape(const LocalTensorInfo& t, ByteWriter* w) {
  w->PutString(t.path);
  w->PutI64(static_cast<int64_t>(t.dtype));
  w->PutI64(static_cast<int64_t>(t.placement));
  w->PutI64(static_cast<int64_t>(t.global_shape.size()));
  for (int64_t d : t.global_shape) w->PutI64(d);
}

}  // namespace

std::string EncodeInfos(const std::vector<LocalTensorInfo>& infos) {
  ByteWriter w;
  w.PutI64(static_cast<int64_t>(infos.size()));
  for (const auto& t : infos) {
    PutShape(t, &w);
    w.PutI64(t.flat_start);
    w.PutI64(t.flat_count);
  }
  return std::move(w.str());
}

std::string EncodeShapes(const std::vector<LocalTensorInfo>& infos) {
  ByteWriter w;
  w.PutI64(static_cast<int64_t>(infos.size()));
  for (const auto& t : infos) PutShape(t, &w);
  return std::move(w.str());
}

std::string EncodeHeldRanges(const std::vector<LocalTensorInfo>& infos) {
  ByteWriter w;
  for (const auto& t : infos) {
    if (t.placement == PlacementKind::kReplicated) continue;
    w.PutI64(t.flat_start);
    w.PutI64(t.flat_count);
  }
  return std::move(w.str());
}

Status DecodeHeldRanges(const std::string& bytes, std::vector<StoredRange>* ranges) {
  ByteReader r(bytes);
  while (!r.done()) {
    StoredRange range;
    if (!r.GetI64(&range.flat_start) || !r.GetI64(&range.flat_count)) {
      return Internal("malformed held ranges");
    }
    ranges->push_back(range);
  }
  return Status::Ok();
}

Status DecodeInfos(const std::string& bytes, std::vector<LocalTensorInfo>* infos) {
  ByteReader r(bytes);
  int64_t n = 0;
  if (!r.GetI64(&n)) return Internal("malformed tensor description");
  for (int64_t i = 0; i < n; ++i) {
    LocalTensorInfo t;
    int64_t dtype, placement, dims;
    if (!r.GetString(&t.path) || !r.GetI64(&dtype) || !r.GetI64(&placement) || !r.GetI64(&dims)) {
      return Internal("malformed tensor description");
    }
    t.dtype = static_cast<at::ScalarType>(dtype);
    t.placement = static_cast<PlacementKind>(placement);
    if (dims < 0 || static_cast<uint64_t>(dims) > r.remaining() / sizeof(int64_t)) {
      return Internal("malformed tensor description");
    }
    t.global_shape.resize(static_cast<size_t>(dims));
    for (auto& d : t.global_shape) {
      if (!r.GetI64(&d)) return Internal("malformed tensor description");
    }
    if (!r.GetI64(&t.flat_start) || !r.GetI64(&t.flat_count)) {
      return Internal("malformed tensor description");
    }
    infos->push_back(std::move(t));
  }
  return Status::Ok();
}

}  // namespace distckpt
