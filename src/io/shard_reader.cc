#include "io/shard_reader.h"

#include <algorithm>
#include <cstring>

#include "core/checksum.h"
#include "core/status_macros.h"
#include "layout/filename.h"

namespace distckpt {

namespace {
constexpr int64_t kPiecesPerRead = 64;
constexpr char kHdf5Signature[] = "\x89HDF\r\n\x1a\n";
}  // namespace

Result<ReadableFile*> ShardReader::File(const std::string& name) {
  auto it = files_.find(name);
  if (it != files_.end()) return it->second.get();
  const std::string path = JoinPath(dir_, name);
  auto opened = env_->OpenReadable(path);
  if (!opened.ok()) return opened.status();
  char signature[8];
  Status sig = opened.value()->PRead(0, signature, sizeof(signature));
  if (!sig.ok() || std::memcmp(signature, kHdf5Signature, 8) != 0) {
    return Corrupt("'" + path + "' is not an HDF5 rank file");
  }
  ++stats_.files_opened;
  ReadableFile* raw = opened.value().get();
  // Size and HDF5 metadata: a flipped bit outside tensor data is caught here.
  for (const FileRecord& record : manifest_->file_records) {
    if (record.name != name) continue;
    auto size = raw->Size();
    if (!size.ok()) return size.status();
    if (size.value() != record.size) {
      return Corrupt("'" + path + "' is " + std::to_string(size.value()) +
                     " bytes, the manifest says " + std::to_string(record.size) +
                     " (truncated or replaced?)");
    }
    if (data_ranges_.empty()) CollectDataRanges();
    std::vector<std::pair<uint64_t, uint64_t>>& data = data_ranges_[name];
    std::sort(data.begin(), data.end());
    uint64_t hash = 0;
    bool read = HashOutside(
        record.size, data,
        [&](uint64_t off, void* buf, size_t n) { return raw->PRead(off, buf, n).ok(); }, &hash);
    if (!read || hash != record.meta_xxh3) {
      return Corrupt("'" + path +
                     "': HDF5 metadata (bytes outside tensor data) fails its xxh3 "
                     "checksum");
    }
  }
  files_[name] = std::move(opened).value();
  return raw;
}

// One pass over the manifest for every file, instead of one pass per file opened.
void ShardReader::CollectDataRanges() {
  for (const TensorRecord& t : manifest_->tensors) {
    for (const ShardRecord& s : t.shards) {
      data_ranges_[s.file].emplace_back(s.byte_offset,
                                        s.byte_offset + s.flat_count * c10::elementSize(t.dtype));
    }
  }
}

Status ShardReader::ReadElements(const TensorRecord& tensor, int64_t begin, int64_t count,
                                 void* dest) {
  const int64_t esize = c10::elementSize(tensor.dtype);
  char* out = static_cast<char*>(dest);
  for (const ShardRecord& s : tensor.shards) {
    const int64_t lo = std::max(begin, s.flat_start);
    const int64_t hi = std::min(begin + count, s.flat_start + s.flat_count);
    if (lo >= hi) continue;
    RETURN_IF_ERROR(Read(tensor, s, lo - s.flat_start, hi - lo, out + (lo - begin) * esize));
  }
  return Status::Ok();
}

Status ShardReader::CheckFile(const std::string& name) {
  auto file = File(name);
  return file.ok() ? Status::Ok() : file.status().Annotate("rank " + std::to_string(rank_));
}

Status ShardReader::VerifyFile(const std::string& name) {
  RETURN_IF_ERROR(CheckFile(name));
  for (const TensorRecord& t : manifest_->tensors) {
    for (const ShardRecord& s : t.shards) {
      if (s.file == name) RETURN_IF_ERROR(Verify(t, s));
    }
  }
  return Status::Ok();
}

Status ShardReader::Read(const TensorRecord& tensor, const ShardRecord& shard, int64_t elem_begin,
                         int64_t count, void* dest) {
  const int64_t esize = c10::elementSize(tensor.dtype);
  Range range;
  range.shard_bytes = shard.flat_count * esize;
  range.b0 = elem_begin * esize;
  range.b1 = (elem_begin + count) * esize;
  // Whole pieces are read (each has a checksum), but no piece beyond the one holding b1 - 1.
  range.first = (range.b0 / piece_bytes_) * piece_bytes_;
  range.last =
      std::min(range.shard_bytes, (range.b1 + piece_bytes_ - 1) / piece_bytes_ * piece_bytes_);
  std::string where = "tensor '" + tensor.path + "', file '" + JoinPath(dir_, shard.file) +
                      "', rank " + std::to_string(rank_);
  auto file_or = File(shard.file);
  if (!file_or.ok()) return file_or.status().Annotate(where);
  ReadableFile* file = file_or.value();
  const ReadableFile::Mapping map = mapped_ ? file->Map() : ReadableFile::Mapping{};
  if (map.data) {
    if (shard.byte_offset + static_cast<uint64_t>(range.shard_bytes) > map.size) {
      return Corrupt(where + ": the shard lies beyond the end of the file");
    }
    return ReadMapped(map.data + shard.byte_offset, shard, range, where, file,
                      static_cast<char*>(dest));
  }
  return ReadCopied(file, shard, range, where, static_cast<char*>(dest));
}

Status ShardReader::Mismatch(const std::string& where, const ShardRecord& shard, int64_t p,
                             int64_t len) const {
  return Corrupt(where + ": checksum mismatch in bytes [" + std::to_string(shard.byte_offset + p) +
                 ", " + std::to_string(shard.byte_offset + p + len) +
                 ") of the file (shard elements from " + std::to_string(shard.flat_start) + ")");
}

Status ShardReader::ReadMapped(const char* data, const ShardRecord& shard, const Range& range,
                               const std::string& where, ReadableFile* file, char* out) {
  const int64_t group = kPiecesPerRead * piece_bytes_;
  for (int64_t p = range.first; p < range.last; p += piece_bytes_) {
    if ((p - range.first) % group == 0 && p + group < range.last) {
      file->Prefetch(shard.byte_offset + p + group, static_cast<size_t>(group));
    }
    const int64_t len = std::min(piece_bytes_, range.last - p);
    const size_t index = static_cast<size_t>(p / piece_bytes_);
    const int64_t o0 = std::max(p, range.b0), o1 = std::min(p + len, range.b1);
    stats_.bytes_read += len;
    if (out && o0 == p && o1 == p + len) {
      // Copy, then hash the copy: bytes that change under the mapping are caught.
      std::memcpy(out + (p - range.b0), data + p, static_cast<size_t>(len));
      if (HashBytes(out + (p - range.b0), static_cast<size_t>(len)) != shard.checksums[index]) {
        return Mismatch(where, shard, p, len);
      }
    } else {
      if (HashBytes(data + p, static_cast<size_t>(len)) != shard.checksums[index]) {
        return Mismatch(where, shard, p, len);
      }
      if (out) std::memcpy(out + (o0 - range.b0), data + o0, static_cast<size_t>(o1 - o0));
    }
    stats_.bytes_verified += len;
  }
  return Status::Ok();
}

Status ShardReader::ReadCopied(ReadableFile* file, const ShardRecord& shard, const Range& range,
                               const std::string& where, char* out) {
  const int64_t group = kPiecesPerRead * piece_bytes_;
  for (int64_t g0 = range.first; g0 < range.b1; g0 += group) {
    const int64_t g1 = std::min(g0 + group, range.last);
    const int64_t o0 = std::max(g0, range.b0);
    const int64_t o1 = std::min(g1, range.b1);
    const bool direct = out && o0 == g0 && o1 == g1;
    char* buffer = direct ? out + (g0 - range.b0) : nullptr;
    if (!direct) {
      scratch_.resize(static_cast<size_t>(g1 - g0));
      buffer = scratch_.data();
    }
    const uint64_t file_offset = shard.byte_offset + static_cast<uint64_t>(g0);
    RETURN_IF_ERROR(file->PRead(file_offset, buffer, static_cast<size_t>(g1 - g0)).Annotate(where));
    stats_.bytes_read += g1 - g0;
    for (int64_t p = g0; p < g1; p += piece_bytes_) {
      const int64_t len = std::min(piece_bytes_, g1 - p);
      const size_t index = static_cast<size_t>(p / piece_bytes_);
      if (HashBytes(buffer + (p - g0), static_cast<size_t>(len)) != shard.checksums[index]) {
        return Mismatch(where, shard, p, len);
      }
      stats_.bytes_verified += len;
    }
    if (out && !direct) {
      std::memcpy(out + (o0 - range.b0), buffer + (o0 - g0), static_cast<size_t>(o1 - o0));
    }
  }
  return Status::Ok();
}

}  // namespace distckpt
