#include "distckpt/manifest.h"

#include <algorithm>
#include <utility>

#include "core/status_macros.h"
#include "manifest/validate.h"
#include "plan/plan.h"

namespace distckpt {

int64_t TensorRecord::numel() const { return NumElements(global_shape); }
int64_t TensorRecord::nbytes() const { return numel() * c10::elementSize(dtype); }

const TensorRecord* Manifest::FindTensor(const std::string& path) const {
  // `tensors` is sorted by path (FromJson and the save sort it; Validate checks it).
  auto it =
      std::lower_bound(tensors.begin(), tensors.end(), path,
                       [](const TensorRecord& t, const std::string& p) { return t.path < p; });
  return it != tensors.end() && it->path == path ? &*it : nullptr;
}

TensorRecord* Manifest::FindTensor(const std::string& path) {
  return const_cast<TensorRecord*>(std::as_const(*this).FindTensor(path));
}

int64_t Manifest::TotalBytes() const {
  int64_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();
  return total;
}

namespace {

bool SafeRelativeName(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..";
}

Status ValidateTensor(const Manifest& m, const TensorRecord& t) {
  const std::string where = "tensor '" + t.path + "'";
  for (int64_t d : t.global_shape) {
    if (d < 0) return Corrupt(where + ": negative dimension");
  }
  std::vector<StoredRange> ranges;
  const int64_t esize = c10::elementSize(t.dtype);
  for (const ShardRecord& s : t.shards) {
    if (!SafeRelativeName(s.file)) {
      return Corrupt(where + ": shard file name '" + s.file + "' leaves the directory");
    }
    if (NumElements(s.stored_shape) != s.flat_count) {
      return Corrupt(where + ": shard in '" + s.file + "' has a shape that does not match its " +
                     std::to_string(s.flat_count) + " elements");
    }
    if (s.packed && (s.pack_start < 0 || m.format_version < 2)) {
      return Corrupt(where + ": packed shard in '" + s.file + "' with a bad start");
    }
    const int64_t bytes = s.flat_count * esize;
    const int64_t pieces = (bytes + m.piece_bytes - 1) / m.piece_bytes;
    if (static_cast<int64_t>(s.checksums.size()) != pieces) {
      return Corrupt(where + ": shard in '" + s.file + "' has " +
                     std::to_string(s.checksums.size()) + " checksums, expected " +
                     std::to_string(pieces));
    }
    ranges.push_back({s.flat_start, s.flat_count});
  }
  return CheckCoverage(ranges, t.numel()).Annotate(where);
}

}  // namespace

Status ValidateManifest(const Manifest& m) {
  if (m.format_version < kOldestReadableFormatVersion || m.format_version > kFormatVersion) {
    return Mismatch("format version " + std::to_string(m.format_version) +
                    " is not supported (this build reads versions " +
                    std::to_string(kOldestReadableFormatVersion) + " to " +
                    std::to_string(kFormatVersion) + ")");
  }
  if (m.world_size < 1) return Corrupt("world size " + std::to_string(m.world_size));
  if (m.piece_bytes < 1) return Corrupt("checksum piece size " + std::to_string(m.piece_bytes));
  for (const auto& f : m.files) {
    if (!SafeRelativeName(f)) return Corrupt("rank file name '" + f + "' leaves the directory");
  }
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    if (i > 0 && !(m.tensors[i - 1].path < m.tensors[i].path)) {
      return Corrupt("tensor '" + m.tensors[i].path + "' is listed twice or out of order");
    }
    RETURN_IF_ERROR(ValidateTensor(m, m.tensors[i]));
  }
  return Status::Ok();
}

}  // namespace distckpt
