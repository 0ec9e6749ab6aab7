// The load protocol. Call order, and who makes each call:
//   (rank 0)     read and validate the manifest; vote; broadcast it (skipped when the caller
//                passes a manifest it already shared).
//   (all ranks)  Match: check every destination against the manifest; vote.
//   (all ranks)  ChooseShared: with read-once, all-gather the wanted ranges; tensors every rank
//                wants whole are read 1/M per rank.
//   (all ranks)  VerifyOrStage: read and check every piece (into staging, or verify only for
//                CPU destinations that are read into place later); vote.
//   (all ranks)  ExchangeShared, PlaceVerified (second, checked read into place; device
//                tensors through the staging ring, gpu/staging.h); vote.
//   (all ranks)  CopyStaged: copy staged tensors into the caller's and set the scalars.
// Nothing of the caller's is overwritten before the vote that follows VerifyOrStage.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <map>

#include "core/bytes.h"
#include "core/guarded.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "gpu/staging.h"
#include "io/shard_reader.h"
#include "manifest/fragment.h"
#include "plan/plan.h"

namespace distckpt {
namespace {

struct Pending {
  const TensorRecord* record;
  TensorEntry* entry;
  int64_t start = 0, count = 0;  // the flat range this rank wants
  at::Tensor staging;
  bool verify_then_place = false;  // verified now, read into the destination afterwards
  bool shared = false;             // read 1/M per rank and exchanged
  bool on_device = false;          // placed through the staging ring (a device destination)
};

// Validates the caller's tensor against the stored record; sets the wanted flat range.
Status CheckTarget(const TensorEntry& entry, const TensorRecord& rec, Pending* p) {
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
  p->count = entry.tensor.numel();
  switch (entry.placement) {
    case PlacementKind::kReplicated:
      p->start = 0;
      break;
    case PlacementKind::kShardedRows:
      p->start = entry.offset * RowElements(rec.global_shape);
      break;
    case PlacementKind::kShardedFlat:
      p->start = entry.offset;
      break;
  }
  if (p->start < 0 || p->start + p->count > rec.numel()) {
    return InvalidArgument(where + ": destination range lies outside the tensor");
  }
  return Status::Ok();
}

class LoadRun {
 public:
  LoadRun(Env* env, Communicator& comm, const std::string& dir, const Manifest& manifest,
          const LoadOptions& options)
      : comm_(comm),
        manifest_(manifest),
        options_(options),
        reader_(env, dir, &manifest, comm.rank()),
        engine_(EngineFor(options.device_staging, &built_in_engine_)),
        deadline_(options.timeout_seconds > 0 ? MonotonicSeconds() + options.timeout_seconds : 0) {}

  Status Match(StateTree& tree) {
    pending_.reserve(tree.tensors().size());
    for (auto& [path, entry] : tree.mutable_tensors()) {
      const TensorRecord* rec = manifest_.FindTensor(path);
      if (!rec) return Mismatch("tensor '" + path + "' is not in the checkpoint");
      Pending p{rec, &entry};
      RETURN_IF_ERROR(CheckTarget(entry, *rec, &p));
      pending_.push_back(std::move(p));
    }
    return Status::Ok();
  }

  // Which tensors does every rank want whole (the same range)? Those are read once in total.
  Status ChooseShared() {
    const int world = comm_.size();
    const bool read_once = options_.read_once == ReadOnce::kOn ||
                           (options_.read_once == ReadOnce::kAuto && comm_.node_count() > 1);
    if (!read_once || world == 1) return Status::Ok();
    ByteWriter w;
    for (const Pending& p : pending_) {
      w.PutString(p.record->path);
      w.PutI64(p.start);
      w.PutI64(p.count);
    }
    std::vector<std::string> all;
    RETURN_IF_ERROR(comm_.AllGather(w.str(), &all));
    // path -> number of ranks wanting the same range (-world once any range differs)
    std::map<std::string, std::pair<int, std::pair<int64_t, int64_t>>> seen;
    for (const std::string& bytes : all) {
      ByteReader r(bytes);
      std::string path;
      int64_t start, count;
      while (!r.done() && r.GetString(&path) && r.GetI64(&start) && r.GetI64(&count)) {
        auto [it, inserted] = seen.emplace(path, std::make_pair(1, std::make_pair(start, count)));
        if (inserted) continue;
        it->second.first += 1;
        if (it->second.second != std::make_pair(start, count)) it->second.first = -world;
      }
    }
    for (Pending& p : pending_) p.shared = seen[p.record->path].first == world && p.count > 0;
    return Status::Ok();
  }

  Status VerifyOrStage() {
    const int rank = comm_.rank(), world = comm_.size();
    for (Pending& p : pending_) {
      const at::Tensor& target = p.entry->tensor;
      const bool cpu_contiguous = target.device().is_cpu() && target.is_contiguous();
      if (engine_->Handles(target) && !p.shared) {
        // Verified now without staging memory; read again through the ring into place.
        p.on_device = true;
        if (!options_.in_place) RETURN_IF_ERROR(ReadUnmapped(p, 0, p.count, nullptr));
        continue;
      }
      int64_t begin = 0, end = p.count;
      if (p.shared) {
        begin = p.count * rank / world;
        end = p.count * (rank + 1) / world;
      }
      if (cpu_contiguous && options_.in_place) {
        p.staging = target.view({-1});
      } else if (cpu_contiguous && !p.shared) {
        // No staging memory and no page faults on it: verify now, read into place later.
        p.verify_then_place = true;
        RETURN_IF_ERROR(ReadRange(p, begin, end, nullptr));
        continue;
      } else {
        p.staging = at::empty({p.count}, at::TensorOptions().dtype(p.record->dtype));
      }
      const int64_t esize = c10::elementSize(p.record->dtype);
      RETURN_IF_ERROR(
          ReadRange(p, begin, end, static_cast<char*>(p.staging.data_ptr()) + begin * esize));
    }
    return Status::Ok();
  }

  Status ExchangeShared() {
    const int world = comm_.size();
    for (const Pending& p : pending_) {
      if (!p.shared) continue;
      const int64_t esize = c10::elementSize(p.record->dtype);
      std::vector<int64_t> offsets(world), sizes(world);
      for (int r = 0; r < world; ++r) {
        offsets[r] = p.count * r / world * esize;
        sizes[r] = p.count * (r + 1) / world * esize - offsets[r];
      }
      RETURN_IF_ERROR(comm_.AllGatherInPlace(p.staging.data_ptr(), offsets, sizes)
                          .Annotate("exchanging tensor '" + p.record->path + "'"));
    }
    return Status::Ok();
  }

  // The second, again checked, read straight into the caller's tensors (device tensors through
  // the staging ring). Only a checkpoint that changes, or storage that fails, between the two
  // reads makes it fail; the error then says which destination tensors were already overwritten.
  Status PlaceVerified() {
    int placed = 0;
    for (const Pending& p : pending_) {
      if (!p.verify_then_place) continue;
      Status read = ReadRange(p, 0, p.count, static_cast<char*>(p.entry->tensor.data_ptr()));
      if (!read.ok()) {
        return read.Annotate(
            "the checkpoint could not be read again after it was verified; "
            "destination tensors are partly overwritten (tensor '" +
            p.record->path + "' and the " + std::to_string(placed) + " tensor(s) before it)");
      }
      ++placed;
    }
    return PlaceOnDevices(placed);
  }

  // Verified device destinations, piece by piece: read and checked into a host buffer while the
  // previous piece is copied to the device. A destination that is not contiguous is filled
  // through a contiguous tensor on its device.
  Status PlaceOnDevices(int placed_on_host) {
    std::vector<const Pending*> on_device;
    std::vector<RingSpan> spans;
    for (const Pending& p : pending_) {
      if (!p.on_device) continue;
      const at::Tensor& target = p.entry->tensor;
      at::Tensor flat;
      if (target.is_contiguous()) {
        flat = target.view({-1});
      } else {
        ASSIGN_OR_RETURN(flat, engine_->AllocateDevice(target, p.count));
      }
      on_device.push_back(&p);
      spans.push_back({flat, true, &p.record->path});
    }
    StagingRing ring(engine_, options_.device_staging);
    Status placed = ring.ToDevice(
        spans,
        [&](size_t span, int64_t begin, int64_t count, void* host) {
          return ReadUnmapped(*on_device[span], begin, begin + count, static_cast<char*>(host));
        },
        deadline_);
    staging_bytes_ = ring.host_bytes();
    if (!placed.ok() && ring.copies_queued() == 0 && placed_on_host == 0) return placed;
    if (!placed.ok()) {
      return placed.Annotate(
          std::string(options_.in_place ? "reading in place"
                                        : "the checkpoint could not be read again after it was "
                                          "verified") +
          "; destination tensors are partly overwritten (" + std::to_string(placed_on_host) +
          " in host memory and the device tensors before the one named)");
    }
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < spans.size(); ++i) {
      at::Tensor& target = on_device[i]->entry->tensor;
      if (!target.is_contiguous()) target.copy_(spans[i].flat.view(target.sizes()));
    }
    return Status::Ok();
  }

  Status CopyStaged(StateTree& tree) {
    at::NoGradGuard no_grad;
    for (Pending& p : pending_) {
      if (p.verify_then_place || !p.staging.defined()) continue;
      if (p.staging.data_ptr() != p.entry->tensor.data_ptr()) {
        p.entry->tensor.copy_(p.staging.view(p.entry->tensor.sizes()));
      }
    }
    for (const auto& [path, value] : manifest_.scalars) tree.SetScalar(path, value);
    return Status::Ok();
  }

  const LoadStats& stats() const { return reader_.stats(); }
  int64_t staging_bytes() const { return staging_bytes_; }

 private:
  // Reads elements [begin, end) of p's range into dest (nullptr: verify only).
  Status ReadRange(const Pending& p, int64_t begin, int64_t end, char* dest) {
    if (deadline_ > 0 && MonotonicSeconds() > deadline_) {
      return Status(Code::kAborted, "tensor '" + p.record->path + "', rank " +
                                        std::to_string(comm_.rank()) +
                                        ": the load did not finish within its time limit");
    }
    std::vector<StoredRange> ranges;
    ranges.reserve(p.record->shards.size());
    for (const ShardRecord& s : p.record->shards) ranges.push_back({s.flat_start, s.flat_count});
    auto items = PlanRead(ranges, p.start + begin, end - begin);
    if (!items.ok()) return items.status().Annotate("tensor '" + p.record->path + "'");
    const int64_t esize = c10::elementSize(p.record->dtype);
    for (const ReadItem& item : items.value()) {
      RETURN_IF_ERROR(reader_.Read(*p.record, p.record->shards[item.shard_index], item.shard_elem,
                                   item.count, dest ? dest + item.dest_elem * esize : nullptr));
    }
    return Status::Ok();
  }

  // ReadRange through pread: pages of a mapped file would count in this process's resident
  // memory, which for device destinations must stay within the staging budget.
  Status ReadUnmapped(const Pending& p, int64_t begin, int64_t end, char* dest) {
    reader_.set_mapped(false);
    Status s = ReadRange(p, begin, end, dest);
    reader_.set_mapped(true);
    return s;
  }

  Communicator& comm_;
  const Manifest& manifest_;
  const LoadOptions& options_;
  ShardReader reader_;
  std::unique_ptr<CopyEngine> built_in_engine_;
  CopyEngine* engine_;
  double deadline_;
  int64_t staging_bytes_ = 0;
  std::vector<Pending> pending_;
};

}  // namespace

Status Checkpointer::ShareManifest(const std::string& dir, Manifest* manifest) {
  std::string wire;
  Status local;
  if (comm_.rank() == 0) {
    auto read = distckpt::ReadManifest(dir, env_);
    if (read.ok()) {
      *manifest = std::move(read).value();
      if (comm_.size() > 1) wire = EncodeManifestWire(*manifest);
    } else {
      local = read.status();
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local));
  if (comm_.size() == 1) return Status::Ok();
  RETURN_IF_ERROR(comm_.Broadcast(&wire, 0));
  if (comm_.rank() != 0) {
    ASSIGN_OR_RETURN(*manifest, DecodeManifestWire(wire));
  }
  return Status::Ok();
}

Status Checkpointer::LoadStatus(const std::string& dir, StateTree& tree,
                                const LoadOptions& options) {
  // Retention elsewhere on this machine must not delete the checkpoint from before its manifest
  // is read; a lock that cannot be taken only loses that protection.
  auto guard = env_->LockDir(dir, LockMode::kShared);
  if (options.manifest) return LoadLocked(dir, *options.manifest, tree, options);
  Manifest manifest;
  RETURN_IF_ERROR(ShareManifest(dir, &manifest).Annotate("loading '" + dir + "'"));
  return LoadLocked(dir, manifest, tree, options);
}

Status Checkpointer::LoadLocked(const std::string& dir, const Manifest& manifest, StateTree& tree,
                                const LoadOptions& options) {
  const std::string rank_tag = "rank " + std::to_string(comm_.rank());
  const std::string where = "loading '" + dir + "'";
  LoadRun run(env_, comm_, dir, manifest, options);
  RETURN_IF_ERROR(AgreeOnStatus(comm_, run.Match(tree)).Annotate(where));
  RETURN_IF_ERROR(run.ChooseShared());
  Status local = Guarded("reading " + rank_tag, [&] { return run.VerifyOrStage(); });
  load_stats_ = run.stats();
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));
  RETURN_IF_ERROR(run.ExchangeShared());
  local = Guarded("reading verified tensors into place on " + rank_tag,
                  [&] { return run.PlaceVerified(); });
  load_stats_.bytes_reread = run.stats().bytes_read - load_stats_.bytes_read;
  load_stats_.bytes_verified = run.stats().bytes_verified;
  load_stats_.device_staging_bytes = run.staging_bytes();
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));
  return Guarded("copying into destination tensors", [&] { return run.CopyStaged(tree); });
}

std::string Checkpointer::Load(const std::string& dir, StateTree& tree,
                               const LoadOptions& options) {
  return LoadFallingBack(dir, options, [&](const std::string& chosen) {
    LoadOptions once = options;
    if (chosen != dir) once.manifest = nullptr;
    // Every host holds the whole of a local step once Latest() gathered it: reading it from
    // memory on every rank beats exchanging it between hosts.
    const std::string& local_root = options_.local.root;
    if (!local_root.empty() && chosen.compare(0, local_root.size(), local_root) == 0 &&
        once.read_once == ReadOnce::kAuto) {
      once.read_once = ReadOnce::kOff;
    }
    // Latest() has just verified every byte of it on every host: the load's own verifying read
    // would be a second one. Each byte is still checked as it is read into place.
    if (!verified_local_dir_.empty() && chosen == verified_local_dir_) once.in_place = true;
    verified_local_dir_.clear();
    ThrowIfError(LoadStatus(chosen, tree, once));
  });
}

}  // namespace distckpt
