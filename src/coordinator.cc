#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/version.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>

#include "core/bytes.h"
#include "distckpt/checkpoint.h"
#include "distckpt/plan.h"
#include "storage/checksum.h"
#include "storage/hdf5_file.h"
#include "storage/shard_reader.h"

namespace distckpt {

namespace {

constexpr char kTmpPrefix[] = ".tmp-step-";
constexpr char kStepPrefix[] = "step-";

std::string RankFileName(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank-%05d.h5", rank);
  return buf;
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `fn`, turning a LibTorch or standard exception into a Status.
template <typename Fn>
Status Guarded(const std::string& what, Fn&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    return e.status();
  } catch (const c10::Error& e) {
    return Internal(what + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(what + ": " + e.what());
  }
}

Status DescribeLocal(const StateTree& tree, std::vector<LocalTensorInfo>* out) {
  for (const auto& [path, entry] : tree.tensors()) {
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
          return InvalidArgument(where +
                                 ": replicated tensor's shape differs from its global shape");
        }
        info.flat_start = 0;
        info.flat_count = local_numel;
        break;
      case PlacementKind::kShardedRows: {
        const int64_t row = RowElements(entry.global_shape);
        const auto local_shape = entry.tensor.sizes().vec();
        if (local_shape.size() != entry.global_shape.size() ||
            !std::equal(local_shape.begin() + 1, local_shape.end(),
                        entry.global_shape.begin() + 1)) {
          return InvalidArgument(where +
                                 ": row shard's trailing dims differ from the global shape");
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
                                 std::to_string(entry.offset + local_numel) +
                                 ") exceed the global " + std::to_string(global_numel));
        }
        info.flat_start = entry.offset;
        info.flat_count = local_numel;
        break;
    }
    out->push_back(std::move(info));
  }
  return Status::Ok();
}

std::string EncodeInfos(const std::vector<LocalTensorInfo>& infos) {
  ByteWriter w;
  w.PutI64(static_cast<int64_t>(infos.size()));
  for (const auto& t : infos) {
    w.PutString(t.path);
    w.PutI64(static_cast<int64_t>(t.dtype));
    w.PutI64(static_cast<int64_t>(t.placement));
    w.PutI64(static_cast<int64_t>(t.global_shape.size()));
    for (int64_t d : t.global_shape) w.PutI64(d);
    w.PutI64(t.flat_start);
    w.PutI64(t.flat_count);
  }
  return w.str();
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
    t.global_shape.resize(static_cast<size_t>(dims));
    for (auto& d : t.global_shape) r.GetI64(&d);
    if (!r.GetI64(&t.flat_start) || !r.GetI64(&t.flat_count)) {
      return Internal("malformed tensor description");
    }
    infos->push_back(std::move(t));
  }
  return Status::Ok();
}

// Rank files record shards as a manifest fragment: the tensors list of a Manifest.
std::string EncodeShards(const std::vector<TensorRecord>& records,
                         const std::vector<FileRecord>& files) {
  Manifest fragment;
  fragment.tensors = records;
  fragment.file_records = files;
  return fragment.ToJson();
}

// This rank's part of the save: one HDF5 file with one dataset per planned write.
Status WriteRankFile(Env* env, const std::string& dir, int rank, const StateTree& tree,
                     const SavePlan& plan, int64_t piece_bytes, double deadline,
                     std::vector<TensorRecord>* out, std::vector<FileRecord>* files) {
  const std::vector<WriteItem>& items = plan.per_rank[rank];
  if (items.empty()) return Status::Ok();
  const std::string name = RankFileName(rank);
  const std::string path = JoinPath(dir, name);
  std::vector<DatasetRequest> requests;
  std::vector<at::Tensor> sources;
  for (const WriteItem& item : items) {
    const TensorEntry& entry = tree.tensor(item.path);
    at::Tensor local = entry.tensor.detach();
    if (!local.device().is_cpu()) local = local.to(at::kCPU);
    local = local.contiguous().reshape({-1}).narrow(0, item.local_start, item.flat_count);
    sources.push_back(local);
    std::vector<int64_t> shape;
    if (entry.global_shape.empty()) {
      shape = {};
    } else if (item.row_aligned) {
      shape = entry.global_shape;
      shape[0] = item.flat_count / RowElements(entry.global_shape);
    } else {
      shape = {item.flat_count};
    }
    requests.push_back({item.path, local.scalar_type(), shape});
  }
  ASSIGN_OR_RETURN(std::vector<uint64_t> offsets, CreateRankFile(path, requests));
  ASSIGN_OR_RETURN(auto file, env->OpenWritable(path));
  for (size_t i = 0; i < items.size(); ++i) {
    const WriteItem& item = items[i];
    const at::Tensor& src = sources[i];
    const size_t nbytes = src.nbytes();
    const char* data = static_cast<const char*>(src.data_ptr());
    const std::string where = "tensor '" + item.path + "', rank " + std::to_string(rank);
    // Pieces of at most 64 MiB, so that a deadline is noticed on slow storage.
    constexpr size_t kPiece = 64 << 20;
    for (size_t off = 0; off < nbytes; off += kPiece) {
      if (deadline > 0 && NowSeconds() > deadline) {
        return Status(Code::kAborted, where +
                                          ": the save did not finish within its time limit "
                                          "(writing '" +
                                          path + "')");
      }
      RETURN_IF_ERROR(file->PWrite(offsets[i] + off, data + off, std::min(kPiece, nbytes - off))
                          .Annotate(where));
    }
    TensorRecord rec;
    rec.path = item.path;
    ShardRecord shard;
    shard.writer_rank = rank;
    shard.file = name;
    shard.dataset = item.path;
    shard.flat_start = item.flat_start;
    shard.flat_count = item.flat_count;
    shard.stored_shape = requests[i].shape;
    shard.byte_offset = offsets[i];
    shard.checksums = PieceHashes(data, nbytes, static_cast<size_t>(piece_bytes));
    rec.shards.push_back(std::move(shard));
    out->push_back(std::move(rec));
  }
  RETURN_IF_ERROR(file->Sync().Annotate("rank " + std::to_string(rank)));
  RETURN_IF_ERROR(file->Close());
  // Size and a checksum of everything that is not tensor data (the HDF5 metadata).
  ASSIGN_OR_RETURN(auto in, env->OpenReadable(path));
  FileRecord record;
  record.name = name;
  ASSIGN_OR_RETURN(record.size, in->Size());
  std::vector<std::pair<uint64_t, uint64_t>> data;
  for (size_t i = 0; i < items.size(); ++i) {
    data.emplace_back(offsets[i], offsets[i] + sources[i].nbytes());
  }
  std::sort(data.begin(), data.end());
  if (!HashOutside(
          record.size, data,
          [&](uint64_t off, void* buf, size_t n) { return in->PRead(off, buf, n).ok(); },
          &record.meta_xxh3)) {
    return IoError("cannot read back '" + path + "'");
  }
  files->push_back(record);
  return Status::Ok();
}

std::string RandomNonce() {
  std::random_device rd;
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", rd());
  return buf;
}

bool ParseStepDir(const std::string& name, const char* prefix, int64_t* step) {
  const std::string p = prefix;
  if (name.rfind(p, 0) != 0) return false;
  const std::string digits = name.substr(p.size(), 8);
  if (digits.size() != 8 || digits.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  if (std::string(prefix) == kStepPrefix && name.size() != p.size() + 8) return false;
  *step = std::stoll(digits);
  return true;
}

}  // namespace

std::string CheckpointDirName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

Checkpointer::Checkpointer(std::string root, Communicator& comm, CheckpointerOptions options)
    : root_(std::move(root)),
      comm_(comm),
      options_(options),
      env_(options.env ? options.env : Env::Default()) {}

Status Checkpointer::PlanCollective(const StateTree& tree, SavePlan* plan) {
  const int world = comm_.size();
  std::vector<LocalTensorInfo> mine;
  Status local = DescribeLocal(tree, &mine);
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local));
  std::vector<std::string> gathered;
  RETURN_IF_ERROR(comm_.AllGather(EncodeInfos(mine), &gathered));
  std::vector<std::vector<LocalTensorInfo>> all(world);
  for (int r = 0; r < world; ++r) RETURN_IF_ERROR(DecodeInfos(gathered[r], &all[r]));
  ASSIGN_OR_RETURN(*plan, PlanSave(all, options_.min_split_bytes));
  return Status::Ok();
}

Status Checkpointer::SaveStatus(const StateTree& tree, int64_t step, std::string* out_dir) {
  const int rank = comm_.rank();
  const int world = comm_.size();
  const std::string rank_tag = "rank " + std::to_string(rank);
  if (step < 0 || step > 99999999) {
    return InvalidArgument("step " + std::to_string(step) + " is outside [0, 99999999]");
  }

  const double deadline =
      options_.save_timeout_seconds > 0 ? NowSeconds() + options_.save_timeout_seconds : 0;
  // Phase 1: every rank describes its tree; every rank computes the same plan.
  SavePlan plan;
  RETURN_IF_ERROR(PlanCollective(tree, &plan));
  Status local;

  // Phase 2: rank 0 clears leftovers of saves that never committed and makes the directory.
  std::string tmp_name;
  if (rank == 0) {
    local = env_->CreateDir(root_);
    if (local.ok()) {
      auto names = env_->ListDir(root_);
      if (names.ok()) {
        for (const std::string& n : names.value()) {
          if (n.rfind(kTmpPrefix, 0) == 0) env_->RemoveAll(JoinPath(root_, n));
        }
      }
      tmp_name = std::string(kTmpPrefix) + CheckpointDirName(step).substr(5) + "-" + RandomNonce();
      local = env_->CreateDir(JoinPath(root_, tmp_name));
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local));
  RETURN_IF_ERROR(comm_.Broadcast(&tmp_name, 0));
  const std::string tmp_dir = JoinPath(root_, tmp_name);

  // Phase 3: every rank writes and fsyncs its file, then the ranks vote.
  std::vector<TensorRecord> written;
  std::vector<FileRecord> written_files;
  local = Guarded("writing " + rank_tag, [&] {
    return WriteRankFile(env_, tmp_dir, rank, tree, plan, options_.piece_bytes, deadline, &written,
                         &written_files);
  });
  Status agreed = AgreeOnStatus(comm_, local);
  std::vector<std::string> fragments;
  if (agreed.ok()) agreed = comm_.AllGather(EncodeShards(written, written_files), &fragments);
  if (!agreed.ok()) {
    if (rank == 0) env_->RemoveAll(tmp_dir);
    return agreed.Annotate("save of step " + std::to_string(step) + " to '" + root_ +
                           "' failed, nothing was committed");
  }

  // Phase 4: rank 0 writes the manifest and renames the directory into place.
  const std::string final_dir = JoinPath(root_, CheckpointDirName(step));
  if (rank == 0) {
    local = Guarded("committing", [&]() -> Status {
      Manifest m;
      m.step = step;
      m.world_size = world;
      m.created_unix =
          std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
              .count();
      m.library_version = kLibraryVersion;
      m.torch_version = TORCH_VERSION;
      m.piece_bytes = options_.piece_bytes;
      m.scalars = tree.scalars();
      for (const TensorPlanInfo& t : plan.tensors) {
        m.tensors.push_back({t.path, t.dtype, t.global_shape, t.placement, {}});
      }
      for (int r = 0; r < world; ++r) {
        if (!plan.per_rank[r].empty()) m.files.push_back(RankFileName(r));
        auto fragment = Manifest::FromJson(fragments[r], /*validate=*/false);
        if (!fragment.ok())
          return fragment.status().Annotate("shards of rank " + std::to_string(r));
        for (const FileRecord& f : fragment.value().file_records) m.file_records.push_back(f);
        for (TensorRecord& rec : fragment.value().tensors) {
          for (TensorRecord& t : m.tensors) {
            if (t.path == rec.path) {
              for (auto& s : rec.shards) t.shards.push_back(std::move(s));
            }
          }
        }
      }
      for (TensorRecord& t : m.tensors) {
        std::sort(t.shards.begin(), t.shards.end(), [](const ShardRecord& a, const ShardRecord& b) {
          return a.flat_start < b.flat_start;
        });
      }
      RETURN_IF_ERROR(WriteManifest(env_, tmp_dir, m));
      RETURN_IF_ERROR(env_->SyncDir(tmp_dir));
      if (env_->Exists(final_dir)) {
        // Re-saving a step: swap atomically, then drop the old copy.
        RETURN_IF_ERROR(env_->Exchange(tmp_dir, final_dir));
        env_->RemoveAll(tmp_dir);
      } else {
        RETURN_IF_ERROR(env_->Rename(tmp_dir, final_dir));
      }
      RETURN_IF_ERROR(env_->SyncDir(root_));
      if (options_.retention.active()) CollectGarbage(root_, options_.retention);
      return Status::Ok();
    });
    if (!local.ok()) env_->RemoveAll(tmp_dir);
  }
  RETURN_IF_ERROR(
      AgreeOnStatus(comm_, local).Annotate("commit of step " + std::to_string(step) + " failed"));
  *out_dir = final_dir;
  return Status::Ok();
}

std::string Checkpointer::Save(const StateTree& tree, int64_t step) {
  std::string dir;
  ThrowIfError(SaveStatus(tree, step, &dir));
  return dir;
}

Status Checkpointer::ShareManifest(const std::string& dir, Manifest* manifest) {
  std::string json;
  Status local;
  if (comm_.rank() == 0) {
    auto read = distckpt::ReadManifest(dir);
    if (read.ok()) {
      json = read.value().ToJson();
      *manifest = std::move(read).value();
    } else {
      local = read.status();
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local));
  RETURN_IF_ERROR(comm_.Broadcast(&json, 0));
  if (comm_.rank() != 0) {
    auto parsed = Manifest::FromJson(json);
    if (!parsed.ok()) return parsed.status();
    *manifest = std::move(parsed).value();
  }
  return Status::Ok();
}

Manifest Checkpointer::ReadManifest(const std::string& dir) {
  Manifest m;
  ThrowIfError(ShareManifest(dir, &m));
  return m;
}

namespace {

// Validates the caller's tensor against the stored record; returns the wanted flat range.
Status CheckTarget(const TensorEntry& entry, const TensorRecord& rec, int64_t* start,
                   int64_t* count) {
  const std::string where = "tensor '" + rec.path + "'";
  if (!entry.tensor.defined()) return InvalidArgument(where + ": destination is undefined");
  if (entry.tensor.scalar_type() != rec.dtype) {
    return Mismatch(where + ": checkpoint has dtype " + DtypeName(rec.dtype) +
                    ", destination has " + std::string(c10::toString(entry.tensor.scalar_type())));
  }
  if (entry.global_shape != rec.global_shape) {
    return Mismatch(where + ": checkpoint has shape " + ShapeString(rec.global_shape) +
                    ", destination has " + ShapeString(entry.global_shape));
  }
  *count = entry.tensor.numel();
  switch (entry.placement) {
    case PlacementKind::kReplicated:
      *start = 0;
      break;
    case PlacementKind::kShardedRows:
      *start = entry.offset * RowElements(rec.global_shape);
      break;
    case PlacementKind::kShardedFlat:
      *start = entry.offset;
      break;
  }
  if (*start < 0 || *start + *count > rec.numel()) {
    return InvalidArgument(where + ": destination range lies outside the tensor");
  }
  return Status::Ok();
}

}  // namespace

Status Checkpointer::LoadStatus(const std::string& dir, StateTree& tree,
                                const LoadOptions& options) {
  const int rank = comm_.rank();
  const std::string rank_tag = "rank " + std::to_string(rank);
  LoadGuard guard(dir);  // retention elsewhere on this machine must not delete it meanwhile
  Manifest manifest;
  RETURN_IF_ERROR(ShareManifest(dir, &manifest).Annotate("loading '" + dir + "'"));

  // Validate every destination before reading anything.
  struct Pending {
    const TensorRecord* record;
    TensorEntry* entry;
    int64_t start, count;
    at::Tensor staging;
    bool verify_then_place = false;  // verified now, read into the destination afterwards
  };
  std::vector<Pending> pending;
  Status local;
  for (auto& [path, entry] : tree.mutable_tensors()) {
    const TensorRecord* rec = manifest.FindTensor(path);
    if (!rec) {
      local = Mismatch("tensor '" + path + "' is not in the checkpoint");
      break;
    }
    Pending p{rec, &entry, 0, 0, {}};
    local = CheckTarget(entry, *rec, &p.start, &p.count);
    if (!local.ok()) break;
    pending.push_back(p);
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate("loading '" + dir + "'"));

  // Which tensors does every rank want whole (the same range)? Those are read once in total.
  const int world = comm_.size();
  std::vector<bool> shared(pending.size(), false);
  const bool read_once = options.read_once == ReadOnce::kOn ||
                         (options.read_once == ReadOnce::kAuto && comm_.node_count() > 1);
  if (read_once && world > 1) {
    ByteWriter w;
    for (const Pending& p : pending) {
      w.PutString(p.record->path);
      w.PutI64(p.start);
      w.PutI64(p.count);
    }
    std::vector<std::string> all;
    RETURN_IF_ERROR(comm_.AllGather(w.str(), &all));
    std::map<std::string, std::pair<int, std::pair<int64_t, int64_t>>>
        seen;  // path -> (ranks, range)
    for (const std::string& bytes : all) {
      ByteReader r(bytes);
      std::string path;
      int64_t start, count;
      while (!r.done() && r.GetString(&path) && r.GetI64(&start) && r.GetI64(&count)) {
        auto [it, inserted] = seen.emplace(path, std::make_pair(1, std::make_pair(start, count)));
        if (!inserted) {
          it->second.first += 1;
          if (it->second.second != std::make_pair(start, count)) it->second.first = -world;
        }
      }
    }
    for (size_t i = 0; i < pending.size(); ++i) {
      shared[i] = seen[pending[i].record->path].first == world && pending[i].count > 0;
    }
  }

  // Reads elements [begin, end) of p's range into dest (nullptr: verify only).
  ShardReader reader(env_, dir, &manifest, rank);
  auto read_range = [&](const Pending& p, int64_t begin, int64_t end, char* dest) -> Status {
    std::vector<StoredRange> ranges;
    for (const ShardRecord& s : p.record->shards) ranges.push_back({s.flat_start, s.flat_count});
    auto items = PlanRead(ranges, p.start + begin, end - begin);
    if (!items.ok()) return items.status().Annotate("tensor '" + p.record->path + "'");
    const int64_t esize = c10::elementSize(p.record->dtype);
    for (const ReadItem& item : items.value()) {
      RETURN_IF_ERROR(reader.Read(*p.record, p.record->shards[item.shard_index], item.shard_elem,
                                  item.count, dest ? dest + item.dest_elem * esize : nullptr));
    }
    return Status::Ok();
  };

  // Verify (or read into staging buffers) every piece; shared tensors a 1/M slice each.
  local = Guarded("reading " + rank_tag, [&]() -> Status {
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending& p = pending[i];
      const at::Tensor& target = p.entry->tensor;
      const bool cpu_contiguous = target.device().is_cpu() && target.is_contiguous();
      int64_t begin = 0, end = p.count;
      if (shared[i]) {
        begin = p.count * rank / world;
        end = p.count * (rank + 1) / world;
      }
      if (cpu_contiguous && options.in_place) {
        p.staging = target.view({-1});
      } else if (cpu_contiguous && !shared[i]) {
        // No staging memory and no page faults on it: verify now, read into place later.
        p.verify_then_place = true;
        RETURN_IF_ERROR(read_range(p, begin, end, nullptr));
        continue;
      } else {
        p.staging = at::empty({p.count}, at::TensorOptions().dtype(p.record->dtype));
      }
      const int64_t esize = c10::elementSize(p.record->dtype);
      RETURN_IF_ERROR(
          read_range(p, begin, end, static_cast<char*>(p.staging.data_ptr()) + begin * esize));
    }
    return Status::Ok();
  });
  load_stats_ = reader.stats();
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate("loading '" + dir + "'"));

  // Every slice verified: exchange the shared tensors' slices.
  for (size_t i = 0; i < pending.size(); ++i) {
    if (!shared[i]) continue;
    const Pending& p = pending[i];
    const int64_t esize = c10::elementSize(p.record->dtype);
    std::vector<int64_t> offsets(world), sizes(world);
    for (int r = 0; r < world; ++r) {
      offsets[r] = p.count * r / world * esize;
      sizes[r] = p.count * (r + 1) / world * esize - offsets[r];
    }
    RETURN_IF_ERROR(comm_.AllGatherInPlace(p.staging.data_ptr(), offsets, sizes)
                        .Annotate("exchanging tensor '" + p.record->path + "'"));
  }

  // Everything verified on every rank: now overwrite the caller's tensors.
  local = Guarded("reading verified tensors into place on " + rank_tag, [&]() -> Status {
    for (const Pending& p : pending) {
      if (!p.verify_then_place) continue;
      Status read = read_range(p, 0, p.count, static_cast<char*>(p.entry->tensor.data_ptr()));
      if (!read.ok()) {
        return read.Annotate("the checkpoint changed after it was verified; tensor '" +
                             p.record->path + "' may be partly overwritten");
      }
    }
    return Status::Ok();
  });
  load_stats_.bytes_reread = reader.stats().bytes_read - load_stats_.bytes_read;
  load_stats_.bytes_verified = reader.stats().bytes_verified;
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate("loading '" + dir + "'"));
  return Guarded("copying into destination tensors", [&]() -> Status {
    at::NoGradGuard no_grad;
    for (Pending& p : pending) {
      if (p.verify_then_place) continue;
      if (!p.staging.is_same(p.entry->tensor) &&
          p.staging.data_ptr() != p.entry->tensor.data_ptr()) {
        p.entry->tensor.copy_(p.staging.view(p.entry->tensor.sizes()));
      }
    }
    for (const auto& [path, value] : manifest.scalars) tree.SetScalar(path, value);
    return Status::Ok();
  });
}

void Checkpointer::Load(const std::string& dir, StateTree& tree, const LoadOptions& options) {
  ThrowIfError(LoadStatus(dir, tree, options));
}

std::optional<std::string> Checkpointer::Latest() {
  std::string dir;
  if (comm_.rank() == 0) dir = LatestCheckpoint(root_).value_or("");
  ThrowIfError(comm_.Broadcast(&dir, 0));
  if (dir.empty()) return std::nullopt;
  return dir;
}

std::vector<CheckpointInfo> ListCheckpoints(const std::string& root) {
  std::vector<CheckpointInfo> out;
  auto names = Env::Default()->ListDir(root);
  if (!names.ok()) return out;
  for (const std::string& name : names.value()) {
    CheckpointInfo info;
    info.dir = JoinPath(root, name);
    if (ParseStepDir(name, kStepPrefix, &info.step)) {
      auto m = ReadManifest(info.dir);
      info.committed = Env::Default()->Exists(JoinPath(info.dir, kManifestName));
      if (m.ok()) {
        info.manifest = std::move(m).value();
      } else {
        info.problem = m.status().ToString();
      }
    } else if (!ParseStepDir(name, kTmpPrefix, &info.step)) {
      continue;
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    return a.step != b.step ? a.step < b.step : a.dir < b.dir;
  });
  return out;
}

std::optional<std::string> LatestCheckpoint(const std::string& root) {
  std::optional<std::string> latest;
  for (const CheckpointInfo& info : ListCheckpoints(root)) {
    if (info.committed && info.manifest) latest = info.dir;
  }
  return latest;
}

Result<VerifyReport> VerifyCheckpoint(const std::string& dir, Env* env,
                                      const ProgressFn& progress) {
  if (!env) env = Env::Default();
  ASSIGN_OR_RETURN(Manifest manifest, ReadManifest(dir));
  VerifyReport report;
  ShardReader reader(env, dir, &manifest, 0);
  std::vector<char> buffer;
  for (const FileRecord& f : manifest.file_records) {
    Status st = reader.CheckFile(f.name);
    if (!st.ok()) report.problems.push_back(st);
  }
  int64_t done = 0;
  const int64_t total = manifest.TotalBytes();
  for (const TensorRecord& t : manifest.tensors) {
    ++report.tensors_checked;
    done += t.nbytes();
    if (progress) progress(done, total);
    const int64_t esize = c10::elementSize(t.dtype);
    for (const ShardRecord& s : t.shards) {
      // Bounded memory: verify large shards in slices.
      const int64_t slice = std::max<int64_t>(1, (64 << 20) / esize);
      for (int64_t e = 0; e < s.flat_count; e += slice) {
        const int64_t n = std::min(slice, s.flat_count - e);
        buffer.resize(static_cast<size_t>(n * esize));
        Status st = reader.Read(t, s, e, n, buffer.data());
        if (!st.ok()) {
          report.problems.push_back(st);
          break;
        }
      }
    }
  }
  report.bytes_checked = reader.stats().bytes_verified;
  return report;
}

}  // namespace distckpt
