// The save protocol. Call order, and who makes each call:
//   (all ranks)  SharedPlan: describe the local tree, all-gather, plan identically.
//   (rank 0)     PrepareTmpDir: remove leftovers of saves that never committed, create
//                ROOT/.tmp-step-<step>-<nonce>/; vote; broadcast its name.
//   (all ranks)  WriteRankFile: write and fsync the rank's file; vote; all-gather fragments.
//   (rank 0)     Commit: merge fragments into the manifest, write it (temp name, fsync, rename),
//                rename the directory into place, fsync ROOT, apply retention; vote.
// A failed vote ends the save on every rank with the same error; nothing is committed.
#include <ATen/ATen.h>
#include <torch/version.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "checkpoint/rank_writer.h"
#include "checkpoint/save_steps.h"
#include "checkpoint/tags.h"
#include "core/checksum.h"
#include "core/guarded.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "io/file_util.h"
#include "layout/filename.h"
#include "manifest/fragment.h"
#include "plan/describe.h"

namespace distckpt {

std::string RandomNonce() {
  std::random_device rd;
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", rd());
  return buf;
}

static double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Result<TmpDir> PrepareTmpDir(Env* env, const std::string& root, int64_t step) {
  return PrepareNamedTmpDir(env, root, TmpCheckpointDirName(step, RandomNonce()));
}

Status RemoveLeftover(Env* env, const std::string& dir) {
  auto lock = env->LockDir(dir, LockMode::kExclusiveNoWait);
  // In use: a save in progress. Any other failure: a file system without locks, as before.
  if (!lock.ok() && lock.status().code() == Code::kAborted) return lock.status();
  return env->RemoveAll(dir);
}

Result<TmpDir> PrepareNamedTmpDir(Env* env, const std::string& root, const std::string& name) {
  RETURN_IF_ERROR(env->CreateDir(root));
  auto names = env->ListDir(root);
  if (names.ok()) {
    for (const std::string& n : names.value()) {
      int64_t other = 0;
      // Best effort: a leftover that cannot be removed now is removed by a later save or gc.
      if (ParseCheckpointDirName(n, &other) == DirKind::kTemporary) {
        (void)RemoveLeftover(env, JoinPath(root, n));
      }
    }
  }
  TmpDir tmp{name, nullptr};
  const std::string dir = JoinPath(root, name);
  RETURN_IF_ERROR(env->CreateDir(dir));
  auto lock = env->LockDir(dir, LockMode::kShared);
  if (lock.ok()) tmp.in_use = std::move(lock.value());
  return tmp;
}

Manifest ManifestSkeleton(const StateTree& tree, const SavePlan& plan, int64_t step, int world,
                          int64_t piece_bytes) {
  Manifest m;
  m.step = step;
  m.world_size = world;
  m.created_unix = UnixSeconds();
  m.library_version = kLibraryVersion;
  m.torch_version = TORCH_VERSION;
  m.piece_bytes = piece_bytes;
  m.scalars = tree.scalars();
  m.tensors.reserve(plan.tensors.size());
  for (const TensorPlanInfo& t : plan.tensors) {
    m.tensors.push_back({t.path, t.dtype, t.global_shape, t.placement, {}});
  }
  for (int r = 0; r < world; ++r) {
    if (!plan.per_rank[r].empty()) m.files.push_back(RankFileName(r));
  }
  return m;
}

Status WriteShare(Env* env, const CheckpointerOptions& options, const std::string& tmp_dir,
                  int rank, double deadline, const StateTree& tree, const SavePlan& plan,
                  std::string* fragment, SaveStats* stats) {
  std::vector<TensorRecord> written;
  std::vector<FileRecord> written_files;
  const RankFileJob job{env,
                        tmp_dir,
                        rank,
                        options.piece_bytes,
                        options.pack_below_bytes,
                        deadline,
                        options.device_staging};
  Status st = Guarded("writing rank " + std::to_string(rank), [&] {
    return WriteRankFile(job, tree, plan, &written, &written_files, stats);
  });
  if (st.ok()) *fragment = EncodeFragment(written, written_files);
  return st;
}

Status Commit(Env* env, const std::string& root, const std::string& tmp_dir,
              const std::string& final_dir, const Manifest& manifest) {
  RETURN_IF_ERROR(WriteManifest(env, tmp_dir, manifest));
  RETURN_IF_ERROR(env->SyncDir(tmp_dir));
  // A move that cannot be made durable (the fsync of root fails) is undone, so that a failed
  // commit never leaves the step in place.
  if (env->Exists(final_dir)) {
    // Re-saving a step: swap atomically, then drop the old copy (a leftover is removed later).
    RETURN_IF_ERROR(env->Exchange(tmp_dir, final_dir));
    Status synced = env->SyncDir(root);
    if (!synced.ok()) {
      (void)env->Exchange(tmp_dir, final_dir);
      return synced;
    }
    (void)env->RemoveAll(tmp_dir);
    return Status::Ok();
  }
  RETURN_IF_ERROR(env->Rename(tmp_dir, final_dir));
  Status synced = env->SyncDir(root);
  if (!synced.ok()) (void)env->Rename(final_dir, tmp_dir);
  return synced;
}

Checkpointer::Checkpointer(std::string root, Communicator& comm, CheckpointerOptions options)
    : root_(std::move(root)), comm_(comm), options_(options), env_(EnvOrDefault(options.env)) {
  comm_.set_collective_timeout(options.collective_timeout_seconds);
}

Status Checkpointer::SharedPlan(const StateTree& tree, std::shared_ptr<const SavePlan>* plan) {
  std::vector<LocalTensorInfo> mine;
  Status local = DescribeLocal(tree, &mine);
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local));
  // Ranks exchange 16 bytes: a hash of what they must agree on (names, dtypes, shapes,
  // placements) and a key of the whole description. Equal keys to the cached plan's: reuse it
  // (a training job saves the same shapes again and again). Equal shape hashes: only the ranges
  // of sharded tensors are exchanged, not a copy of every rank's tree.
  const std::string held = EncodeHeldRanges(mine);
  uint64_t hashes[2];
  const std::string shapes = EncodeShapes(mine);
  hashes[0] = HashBytes(shapes.data(), shapes.size()) ^
              static_cast<uint64_t>(options_.min_split_bytes) * 0x9E3779B97F4A7C15ull;
  hashes[1] = hashes[0] ^ (HashBytes(held.data(), held.size()) * 0xC2B2AE3D27D4EB4Full);
  std::vector<std::string> keys;
  RETURN_IF_ERROR(
      comm_.AllGather(std::string(reinterpret_cast<const char*>(hashes), sizeof(hashes)), &keys));
  if (cached_plan_ && keys == plan_keys_) {
    *plan = cached_plan_;
    save_stats_.plan_reused = true;
    return Status::Ok();
  }
  bool agreed = true;
  for (const std::string& k : keys) agreed = agreed && k.compare(0, 8, keys[0], 0, 8) == 0;
  ASSIGN_OR_RETURN(SavePlan planned, agreed ? PlanFromRanges(mine, held) : PlanFromAll(mine));
  cached_plan_ = std::make_shared<const SavePlan>(std::move(planned));
  plan_keys_ = std::move(keys);
  *plan = cached_plan_;
  return Status::Ok();
}

Result<SavePlan> Checkpointer::PlanFromRanges(const std::vector<LocalTensorInfo>& mine,
                                              const std::string& held) {
  std::vector<std::string> gathered;
  RETURN_IF_ERROR(comm_.AllGather(held, &gathered));
  std::vector<std::vector<StoredRange>> ranges(gathered.size());
  for (size_t r = 0; r < gathered.size(); ++r) {
    RETURN_IF_ERROR(DecodeHeldRanges(gathered[r], &ranges[r]));
  }
  return PlanSaveAgreed(mine, ranges, options_.min_split_bytes);
}

// The ranks disagree on their trees: every rank's whole description, so that the error names
// the tensor and the ranks.
Result<SavePlan> Checkpointer::PlanFromAll(const std::vector<LocalTensorInfo>& mine) {
  std::vector<std::string> gathered;
  RETURN_IF_ERROR(comm_.AllGather(EncodeInfos(mine), &gathered));
  std::vector<std::vector<LocalTensorInfo>> all(gathered.size());
  for (size_t r = 0; r < gathered.size(); ++r) RETURN_IF_ERROR(DecodeInfos(gathered[r], &all[r]));
  return PlanSave(all, options_.min_split_bytes);
}

Status Checkpointer::SaveStatus(const StateTree& tree, int64_t step, std::string* out_dir,
                                const std::string& tag) {
  if (root_.empty()) return InvalidArgument("this Checkpointer has no root to save into");
  if (!tag.empty()) RETURN_IF_ERROR(CheckTagName(tag));
  if (step < 0 || step > kMaxStep) {
    return InvalidArgument("step " + std::to_string(step) + " is outside [0, " +
                           std::to_string(kMaxStep) + "]");
  }
  if (!LocalDue(step) && !PersistDue(step) && tag.empty()) {
    save_stats_ = SaveStats();
    return Status::Ok();  // nothing due at this step
  }
  const double start = MonotonicSeconds();
  save_stats_ = SaveStats();
  std::shared_ptr<const SavePlan> plan;
  RETURN_IF_ERROR(SharedPlan(tree, &plan));
  const double plan_seconds = MonotonicSeconds() - start;
  Status saved = SaveDue(tree, *plan, step, out_dir, tag);
  save_stats_.plan_seconds = plan_seconds;
  save_stats_.total_seconds = MonotonicSeconds() - start;
  return saved;
}

bool Checkpointer::LocalDue(int64_t step) const {
  return !options_.local.root.empty() && options_.local.every > 0 &&
         step % options_.local.every == 0;
}

bool Checkpointer::PersistDue(int64_t step) const {
  return options_.persist_every > 0 && step % options_.persist_every == 0;
}

Status Checkpointer::SaveDue(const StateTree& tree, const SavePlan& plan, int64_t step,
                             std::string* out_dir, const std::string& tag) {
  double local_seconds = 0;
  int64_t local_bytes = 0;
  save_stats_.retention_failed.clear();
  if (LocalDue(step)) {
    const double start = MonotonicSeconds();
    RETURN_IF_ERROR(SaveLocal(tree, plan, step, out_dir));
    local_seconds = MonotonicSeconds() - start;
    local_bytes = save_stats_.local_host_bytes;
  }
  Status saved =
      PersistDue(step) || !tag.empty() ? SavePlanned(tree, plan, step, out_dir, tag) : Status::Ok();
  save_stats_.local_seconds = local_seconds;
  save_stats_.local_host_bytes = local_bytes;
  return saved;
}

Status Checkpointer::SavePlanned(const StateTree& tree, const SavePlan& plan, int64_t step,
                                 std::string* out_dir, const std::string& tag) {
  const int rank = comm_.rank();
  const double start = MonotonicSeconds();
  SaveStats fresh;
  fresh.plan_reused = save_stats_.plan_reused;
  fresh.retention_failed = std::move(save_stats_.retention_failed);  // the local tier's
  save_stats_ = std::move(fresh);
  const double deadline =
      options_.save_timeout_seconds > 0 ? MonotonicSeconds() + options_.save_timeout_seconds : 0;
  std::string tmp_name;
  std::unique_ptr<FileLock> in_use;  // held until the step is committed or removed
  Status local;
  if (rank == 0) {
    auto prepared = PrepareTmpDir(env_, root_, step);
    local = prepared.status();
    if (prepared.ok()) {
      tmp_name = prepared->name;
      in_use = std::move(prepared->in_use);
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local));
  RETURN_IF_ERROR(comm_.Broadcast(&tmp_name, 0));
  const std::string tmp_dir = JoinPath(root_, tmp_name);

  std::string fragment;
  local = WriteShare(env_, options_, tmp_dir, rank, deadline, tree, plan, &fragment, &save_stats_);
  const double written_at = MonotonicSeconds();
  Status agreed = AgreeOnStatus(comm_, local);
  std::vector<std::string> fragments;
  if (agreed.ok()) agreed = comm_.AllGather(fragment, &fragments);
  if (!agreed.ok()) {
    if (rank == 0) (void)env_->RemoveAll(tmp_dir);  // best effort; the next save retries
    return agreed.Annotate("save of step " + std::to_string(step) + " to '" + root_ +
                           "' failed, nothing was committed");
  }
  const std::string final_dir = JoinPath(root_, CheckpointDirName(step));
  if (rank == 0) {
    local = Guarded("committing", [&]() -> Status {
      Manifest m = ManifestSkeleton(tree, plan, step, comm_.size(), options_.piece_bytes);
      RETURN_IF_ERROR(MergeFragments(fragments, &m));
      RETURN_IF_ERROR(Commit(env_, root_, tmp_dir, final_dir, m));
      if (!tag.empty()) {
        RETURN_IF_ERROR(TagCheckpoint(final_dir, tag, env_)
                            .Annotate("step " + std::to_string(step) + " was committed untagged"));
      }
      if (options_.retention.active()) {
        NoteRetention(CollectGarbage(root_, options_.retention, env_));
      }
      return Status::Ok();
    });
    if (!local.ok()) (void)env_->RemoveAll(tmp_dir);
  }
  RETURN_IF_ERROR(
      AgreeOnStatus(comm_, local).Annotate("commit of step " + std::to_string(step) + " failed"));
  *out_dir = final_dir;
  save_stats_.commit_seconds = MonotonicSeconds() - written_at;
  save_stats_.total_seconds = MonotonicSeconds() - start;
  return Status::Ok();
}

std::string Checkpointer::Save(const StateTree& tree, int64_t step, const std::string& tag) {
  std::string dir;
  ThrowIfError(SaveStatus(tree, step, &dir, tag));
  return dir;
}

}  // namespace distckpt
