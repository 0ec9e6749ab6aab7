#include "checkpoint/rank_writer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>

#include "core/checksum.h"
#include "core/guarded.h"
#include "core/status_macros.h"
#include "gpu/staging.h"
#include "hdf5/rank_file.h"
#include "layout/filename.h"

namespace distckpt {
namespace {

// Pieces of at most 64 MiB, so that a deadline is noticed on slow storage.
constexpr size_t kWritePiece = 64 << 20;

// The stored shape of a planned write: the tensor's row shape when it covers whole rows.
std::vector<int64_t> StoredShape(const TensorEntry& entry, const WriteItem& item) {
  if (entry.global_shape.empty()) return {};
  if (!item.row_aligned) return {item.flat_count};
  std::vector<int64_t> shape = entry.global_shape;
  shape[0] = item.flat_count / RowElements(entry.global_shape);
  return shape;
}

// The contiguous bytes of one planned write: on the device where the engine copies them out
// piece by piece, else in host memory.
at::Tensor SourceOf(CopyEngine* engine, const TensorEntry& entry, const WriteItem& item,
                    bool* staged) {
  at::Tensor local = entry.tensor.detach();
  *staged = engine->Handles(local);
  if (!*staged && !local.device().is_cpu()) local = local.to(at::kCPU);
  return local.contiguous().reshape({-1}).narrow(0, item.local_start, item.flat_count);
}

Status WriteBytes(const RankFileJob& job, WritableFile* file, const std::string& where,
                  uint64_t offset, const char* data, size_t nbytes) {
  for (size_t off = 0; off < nbytes; off += kWritePiece) {
    if (job.deadline > 0 && MonotonicSeconds() > job.deadline) {
      return Status(Code::kAborted, where +
                                        ": the save did not finish within its time limit "
                                        "(writing '" +
                                        file->path() + "')");
    }
    RETURN_IF_ERROR(file->PWrite(offset + off, data + off, std::min(kWritePiece, nbytes - off))
                        .Annotate(where));
  }
  return Status::Ok();
}

// Size and a checksum of every byte of the file that is not tensor data (the HDF5 metadata).
Result<FileRecord> RecordFile(Env* env, const std::string& path,
                              std::vector<std::pair<uint64_t, uint64_t>> data) {
  ASSIGN_OR_RETURN(auto in, env->OpenReadable(path));
  FileRecord record;
  record.name = BaseName(path);
  ASSIGN_OR_RETURN(record.size, in->Size());
  std::sort(data.begin(), data.end());
  Status read;
  const bool hashed = HashOutside(
      record.size, data,
      [&](uint64_t off, void* buf, size_t n) {
        read = in->PRead(off, buf, n);
        return read.ok();
      },
      &record.meta_xxh3);
  if (!hashed) return read.Annotate("reading back the metadata of '" + path + "'");
  return record;
}

// Where one planned write goes: its own dataset, or a range of its dtype's pack.
struct Placement {
  at::Tensor source;
  bool staged = false;              // on the device: copied out through the staging ring
  std::vector<uint64_t> checksums;  // of the pieces written so far
  DatasetRequest request;           // of its own dataset; unused when packed
  bool packed = false;
  size_t pack = 0;         // index into the pack requests
  int64_t pack_start = 0;  // elements into the pack
  uint64_t byte_offset = 0;
};

// Decides every write's dataset; returns the dataset requests, own datasets first.
std::vector<DatasetRequest> LayOut(const RankFileJob& job, CopyEngine* engine,
                                   const StateTree& tree, const std::vector<WriteItem>& items,
                                   std::vector<Placement>* placements) {
  std::vector<DatasetRequest> own, packs;
  std::map<at::ScalarType, size_t> pack_of;
  for (const WriteItem& item : items) {
    const TensorEntry& entry = tree.tensor(item.path);
    Placement p;
    p.source = SourceOf(engine, entry, item, &p.staged);
    p.request = {item.path, p.source.scalar_type(), StoredShape(entry, item)};
    p.packed = static_cast<int64_t>(p.source.nbytes()) < job.pack_below_bytes;
    if (p.packed) {
      auto [it, added] = pack_of.emplace(p.request.dtype, packs.size());
      if (added)
        packs.push_back({PackDatasetName(DtypeName(p.request.dtype)), p.request.dtype, {0}});
      p.pack = it->second;
      p.pack_start = packs[p.pack].shape[0];
      packs[p.pack].shape[0] += item.flat_count;
    } else {
      own.push_back(p.request);
    }
    placements->push_back(std::move(p));
  }
  own.insert(own.end(), packs.begin(), packs.end());
  return own;
}

void AssignOffsets(const std::vector<uint64_t>& offsets, size_t own_count,
                   std::vector<Placement>* placements) {
  size_t next_own = 0;
  for (Placement& p : *placements) {
    if (p.packed) {
      p.byte_offset = offsets[own_count + p.pack] +
                      static_cast<uint64_t>(p.pack_start) * p.source.element_size();
    } else {
      p.byte_offset = offsets[next_own++];
    }
  }
}

// Writes the packed sources through a bounded buffer, so that neighbours in a pack become one
// large write instead of one small write each.
class PackWriter {
 public:
  PackWriter(const RankFileJob& job, WritableFile* file) : job_(job), file_(file) {}

  // `path` must outlive the writer (it names the tensors of a failed write).
  Status Add(const std::string* path, uint64_t offset, const char* data, size_t n) {
    if (!buffer_.empty() &&
        (offset != start_ + buffer_.size() || buffer_.size() + n > kWritePiece)) {
      RETURN_IF_ERROR(Flush());
    }
    if (buffer_.empty()) {
      start_ = offset;
      first_ = path;
    }
    buffer_.insert(buffer_.end(), data, data + n);
    last_ = path;
    return Status::Ok();
  }

  Status Flush() {
    if (buffer_.empty()) return Status::Ok();
    const std::string where =
        "packed tensors '" + *first_ + "' to '" + *last_ + "', rank " + std::to_string(job_.rank);
    Status s = WriteBytes(job_, file_, where, start_, buffer_.data(), buffer_.size());
    buffer_.clear();
    return s;
  }

 private:
  const RankFileJob& job_;
  WritableFile* file_;
  std::vector<char> buffer_;
  uint64_t start_ = 0;
  const std::string* first_ = nullptr;  // the first and last tensor in the buffer, for errors
  const std::string* last_ = nullptr;
};

ShardRecord RecordShard(const RankFileJob& job, const WriteItem& item, const Placement& p) {
  ShardRecord shard;
  shard.writer_rank = job.rank;
  shard.file = RankFileName(job.rank);
  shard.dataset = p.packed ? PackDatasetName(DtypeName(p.request.dtype)) : item.path;
  shard.packed = p.packed;
  shard.pack_start = p.pack_start;
  shard.flat_start = item.flat_start;
  shard.flat_count = item.flat_count;
  shard.stored_shape = p.packed ? std::vector<int64_t>{item.flat_count} : p.request.shape;
  shard.byte_offset = p.byte_offset;
  shard.checksums = p.checksums;
  return shard;
}

// A save with no device tensor: every span is hashed and written straight from its memory, in
// runs of whole checksum pieces of about 64 MiB (the consumer takes bytes, so a run may cut an
// element).
Status WriteFromHost(const std::vector<RingSpan>& spans, const ConsumeFn& consume,
                     int64_t piece_bytes) {
  constexpr int64_t kRunBytes = 64 << 20;
  const int64_t piece = std::max<int64_t>(piece_bytes, 1);
  const int64_t run = std::max<int64_t>(piece, kRunBytes / piece * piece);
  for (size_t i = 0; i < spans.size(); ++i) {
    const at::Tensor& flat = spans[i].flat;
    const int64_t total = flat.numel() * static_cast<int64_t>(flat.element_size());
    const char* base = static_cast<const char*>(flat.data_ptr());
    for (int64_t b = 0; b < total; b += run) {
      RETURN_IF_ERROR(consume(i, b, base + b, std::min(run, total - b)));
    }
  }
  return Status::Ok();
}

// Hashes and writes every source in `order`; device sources come through the staging ring, whose
// copies of the next pieces run while this one is hashed and written. Pieces are whole checksum
// pieces, so their hashes are the shard's.
Status WriteInOrder(const RankFileJob& job, CopyEngine* engine, const std::vector<WriteItem>& items,
                    const std::vector<size_t>& order, WritableFile* file,
                    std::vector<Placement>* placements, SaveStats* stats) {
  std::vector<RingSpan> spans;
  for (size_t i : order)
    spans.push_back({(*placements)[i].source, (*placements)[i].staged, &items[i].path});
  PackWriter packs(job, file);
  const std::string rank_tag = ", rank " + std::to_string(job.rank);
  auto write = [&](size_t span, int64_t byte_begin, const void* data, int64_t nbytes) {
    const size_t i = order[span];
    Placement& p = (*placements)[i];
    const auto hashes = PieceHashes(data, nbytes, static_cast<size_t>(job.piece_bytes));
    p.checksums.insert(p.checksums.end(), hashes.begin(), hashes.end());
    stats->bytes_written += nbytes;
    const char* bytes = static_cast<const char*>(data);
    if (p.packed) return packs.Add(&items[i].path, p.byte_offset + byte_begin, bytes, nbytes);
    return WriteBytes(job, file, "tensor '" + items[i].path + "'" + rank_tag,
                      p.byte_offset + byte_begin, bytes, nbytes);
  };
  bool any_staged = false;
  for (const RingSpan& span : spans) any_staged = any_staged || span.staged;
  if (any_staged) {
    StagingRing ring(engine, job.staging, job.piece_bytes);
    Status written = ring.FromDevice(spans, write, job.deadline);
    stats->device_staging_bytes = ring.host_bytes();
    RETURN_IF_ERROR(written);
  } else {
    RETURN_IF_ERROR(WriteFromHost(spans, write, job.piece_bytes));
  }
  return packs.Flush();
}

}  // namespace

Status WriteRankFile(const RankFileJob& job, const StateTree& tree, const SavePlan& plan,
                     std::vector<TensorRecord>* shards, std::vector<FileRecord>* files,
                     SaveStats* stats) {
  const std::vector<WriteItem>& items = plan.per_rank[job.rank];
  if (items.empty()) return Status::Ok();
  const std::string path = JoinPath(job.dir, RankFileName(job.rank));
  std::unique_ptr<CopyEngine> built_in;
  CopyEngine* engine = EngineFor(job.staging, &built_in);
  std::vector<Placement> placements;
  const std::vector<DatasetRequest> requests = LayOut(job, engine, tree, items, &placements);
  size_t own_count = 0;
  for (const Placement& p : placements) own_count += p.packed ? 0 : 1;
  double t0 = MonotonicSeconds();
  ASSIGN_OR_RETURN(std::vector<uint64_t> offsets, CreateRankFile(job.env, path, requests));
  stats->layout_seconds += MonotonicSeconds() - t0;
  t0 = MonotonicSeconds();
  AssignOffsets(offsets, own_count, &placements);
  ASSIGN_OR_RETURN(auto file, job.env->OpenWritable(path));
  // Own datasets first, then each pack front to back, so that packed neighbours coalesce.
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const Placement& pa = placements[a];
    const Placement& pb = placements[b];
    return std::make_pair(pa.packed, pa.pack) < std::make_pair(pb.packed, pb.pack);
  });
  RETURN_IF_ERROR(WriteInOrder(job, engine, items, order, file.get(), &placements, stats));
  RETURN_IF_ERROR(file->Sync().Annotate("rank " + std::to_string(job.rank)));
  RETURN_IF_ERROR(file->Close());
  stats->write_seconds += MonotonicSeconds() - t0;
  std::vector<std::pair<uint64_t, uint64_t>> data;
  for (size_t i = 0; i < items.size(); ++i) {
    const Placement& p = placements[i];
    data.emplace_back(p.byte_offset, p.byte_offset + p.source.nbytes());
    TensorRecord record;
    record.path = items[i].path;
    record.shards.push_back(RecordShard(job, items[i], p));
    shards->push_back(std::move(record));
  }
  ASSIGN_OR_RETURN(FileRecord record, RecordFile(job.env, path, std::move(data)));
  files->push_back(std::move(record));
  return Status::Ok();
}

}  // namespace distckpt
