#include "checkpoint/rank_writer.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/checksum.h"
#include "core/guarded.h"
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

// The contiguous CPU bytes of one planned write.
at::Tensor SourceOf(const TensorEntry& entry, const WriteItem& item) {
  at::Tensor local = entry.tensor.detach();
  if (!local.device().is_cpu()) local = local.to(at::kCPU);
  return local.contiguous().reshape({-1}).narrow(0, item.local_start, item.flat_count);
}

Status WriteBytes(const RankFileJob& job, WritableFile* file, const std::string& where,
                  uint64_t offset, const at::Tensor& src) {
  const size_t nbytes = src.nbytes();
  const char* data = static_cast<const char*>(src.data_ptr());
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

}  // namespace

Status WriteRankFile(const RankFileJob& job, const StateTree& tree, const SavePlan& plan,
                     std::vector<TensorRecord>* shards, std::vector<FileRecord>* files) {
  const std::vector<WriteItem>& items = plan.per_rank[job.rank];
  if (items.empty()) return Status::Ok();
  const std::string name = RankFileName(job.rank);
  const std::string path = JoinPath(job.dir, name);
  const std::string rank_tag = ", rank " + std::to_string(job.rank);
  std::vector<DatasetRequest> requests;
  std::vector<at::Tensor> sources;
  for (const WriteItem& item : items) {
    const TensorEntry& entry = tree.tensor(item.path);
    sources.push_back(SourceOf(entry, item));
    requests.push_back({item.path, sources.back().scalar_type(), StoredShape(entry, item)});
  }
  ASSIGN_OR_RETURN(std::vector<uint64_t> offsets, CreateRankFile(job.env, path, requests));
  ASSIGN_OR_RETURN(auto file, job.env->OpenWritable(path));
  std::vector<std::pair<uint64_t, uint64_t>> data;
  for (size_t i = 0; i < items.size(); ++i) {
    const WriteItem& item = items[i];
    const at::Tensor& src = sources[i];
    RETURN_IF_ERROR(
        WriteBytes(job, file.get(), "tensor '" + item.path + "'" + rank_tag, offsets[i], src));
    data.emplace_back(offsets[i], offsets[i] + src.nbytes());
    ShardRecord shard{
        job.rank,
        name,
        item.path,
        item.flat_start,
        item.flat_count,
        requests[i].shape,
        offsets[i],
        PieceHashes(src.data_ptr(), src.nbytes(), static_cast<size_t>(job.piece_bytes))};
    TensorRecord record;
    record.path = item.path;
    record.shards.push_back(std::move(shard));
    shards->push_back(std::move(record));
  }
  RETURN_IF_ERROR(file->Sync().Annotate("rank " + std::to_string(job.rank)));
  RETURN_IF_ERROR(file->Close());
  ASSIGN_OR_RETURN(FileRecord record, RecordFile(job.env, path, std::move(data)));
  files->push_back(std::move(record));
  return Status::Ok();
}

}  // namespace distckpt
