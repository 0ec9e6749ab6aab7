// Checkpointer: the coordinator that saves and loads a StateTree across MPI ranks.
//
// Save (collective): every rank writes its planned share of the tensors into its own HDF5
// file inside ROOT/.tmp-step-<8 digits>-<nonce>/, fsyncs it, and the ranks vote; only if all
// succeeded does rank 0 write manifest.h5 (temporary name, fsync, rename) and rename the
// directory to ROOT/step-<8 digits>/, then fsync ROOT. A directory without a manifest is
// never loaded, and the next save removes it. A failed save leaves older checkpoints alone.
//
// Load (collective): any number of ranks, or one process without MPI, loads any checkpoint.
// Each rank reads only the byte ranges its tensors need, verifies them against the
// manifest's checksums, and only when every rank has everything verified are the caller's
// tensors overwritten (all or nothing).
//
// Every failure is agreed on by all ranks: each rank throws the same distckpt::Error naming the
// failed ranks, the tensor, the file and the offset. A Checkpointer is used by one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "distckpt/comm.h"
#include "distckpt/env.h"
#include "distckpt/manifest.h"
#include "distckpt/manifest_io.h"
#include "distckpt/options.h"
#include "distckpt/tree.h"
#include "distckpt/version.h"

namespace distckpt {

struct SavePlan;         // the planner's output (internal)
struct LocalTensorInfo;  // one rank's description of a tensor (internal)
struct GcReport;         // what CollectGarbage did (below)

class Checkpointer {
 public:
  // `root`: where Save commits and where Load("") looks for the newest checkpoint. A Checkpointer
  // that only loads given directories may have an empty root.
  Checkpointer(std::string root, Communicator& comm, CheckpointerOptions options = {});

  // Collective. Saves `tree` as checkpoint `step` and returns its directory. Throws Error on
  // every rank if any rank fails; nothing is committed then. With a local tier, the step goes
  // to the local tier when due (options.local.every) and to root when due
  // (options.persist_every); the directory returned is the persistent one when both are
  // written, "" when neither is due. With a `tag` (see TagCheckpoint) the step is written to
  // root whatever the cadence and tagged once committed, before retention runs.
  std::string Save(const StateTree& tree, int64_t step, const std::string& tag = "");

  // Collective. Fills every tensor of `tree` in place from checkpoint directory `dir` (each
  // rank the range its placement names) and sets every stored scalar in `tree`; `dir` empty:
  // the newest committed checkpoint under root (Error kNotFound if there is none). Tensors in
  // the checkpoint but not in `tree` are skipped. Throws Error on every rank on any problem,
  // before any tensor of `tree` has been modified. Returns the directory loaded: `dir`, or an
  // older one when options.fall_back skipped damaged checkpoints.
  std::string Load(const std::string& dir, StateTree& tree, const LoadOptions& options = {});

  // Collective. The newest committed checkpoint under root, as rank 0 sees it (LatestCheckpoint,
  // agreed on by every rank). With a local tier (options.local): the newest step of which the
  // surviving hosts hold a verified copy of every rank file, when that is newer than the
  // persistent one; its missing files are first copied between hosts, so that every host holds
  // the whole step and Load reads it without touching the persistent root. Load("") uses this.
  std::optional<std::string> Latest();
  // Which checkpoint the last Latest() chose and why (the tiers it compared).
  const std::string& latest_reason() const { return latest_reason_; }

  const std::string& root() const { return root_; }
  Communicator& comm() { return comm_; }
  const LoadStats& last_load_stats() const { return load_stats_; }
  const SaveStats& last_save_stats() const { return save_stats_; }

 private:
  // The library's own callers (AsyncCheckpointer, import, the state-dict helpers, the tests)
  // reach the Status forms and the planning hooks below through src/checkpoint/access.h.
  friend class CheckpointerAccess;

  Status SaveStatus(const StateTree& tree, int64_t step, std::string* dir,
                    const std::string& tag = "");
  Status LoadStatus(const std::string& dir, StateTree& tree, const LoadOptions& options = {});
  // Collective. Calls load(dir) on `dir` (empty: the newest committed under root) and, with
  // options.fall_back, on each older committed checkpoint while load throws a damaged-checkpoint
  // Error. Returns the directory that loaded.
  std::string LoadFallingBack(const std::string& dir, const LoadOptions& options,
                              const std::function<void(const std::string&)>& load);
  // Collective. The tiers due at `step` (options.local.every, options.persist_every), with a
  // plan from SharedPlan.
  Status SaveDue(const StateTree& tree, const SavePlan& plan, int64_t step, std::string* dir,
                 const std::string& tag = "");
  bool LocalDue(int64_t step) const;
  bool PersistDue(int64_t step) const;
  // Collective. The local tier's share of Save: every rank's file into its host's local root and
  // to its partners on other hosts; every host commits the step.
  Status SaveLocal(const StateTree& tree, const SavePlan& plan, int64_t step, std::string* dir);
  // Collective. The local step to resume from (complete on every host once this returns), or ""
  // when the persistent tier is newer or the local tier cannot give a complete step.
  Status RestoreLocal(int64_t persistent_step, std::string* dir, std::string* why);
  // Collective. Every committed checkpoint under `root`, newest first, as rank 0 sees it.
  std::vector<std::string> CommittedNewestFirst(const std::string& root);
  // Collective. The plan Save would follow for `tree`. The last plan is kept: when every rank's
  // tree has the same names, dtypes, shapes and placements as then, it is reused after an
  // exchange of 16 bytes per rank instead of every rank's tree description.
  Status SharedPlan(const StateTree& tree, std::shared_ptr<const SavePlan>* plan);
  // Collective. Save with a plan from SharedPlan for this very tree shape (the async save plans
  // once and saves its snapshot with the same plan).
  Status SavePlanned(const StateTree& tree, const SavePlan& plan, int64_t step, std::string* dir,
                     const std::string& tag = "");
  Result<SavePlan> PlanFromRanges(const std::vector<LocalTensorInfo>& mine,
                                  const std::string& held);
  Result<SavePlan> PlanFromAll(const std::vector<LocalTensorInfo>& mine);
  // Collective. Rank 0 reads and validates the manifest and shares it with every rank.
  Status ShareManifest(const std::string& dir, Manifest* manifest);
  // The load itself; the caller holds the shared lock on `dir`.
  Status LoadLocked(const std::string& dir, const Manifest& manifest, StateTree& tree,
                    const LoadOptions& options);
  // Keeps what the save's retention could not remove in save_stats_; says each directory on
  // stderr the first time.
  void NoteRetention(const GcReport& report);

  std::string root_;
  Communicator& comm_;
  CheckpointerOptions options_;
  Env* env_;
  LoadStats load_stats_;
  SaveStats save_stats_;
  std::vector<std::string> plan_keys_;  // every rank's description hash for cached_plan_
  std::shared_ptr<const SavePlan> cached_plan_;
  std::string latest_reason_;
  // The local step the last Latest() gathered, every byte of it verified on every host: the
  // next Load of it reads each byte once, into place, instead of verifying it a second time.
  std::string verified_local_dir_;
  bool warned_fewer_replicas_ = false;
  std::vector<std::string> retention_warned_;  // directories NoteRetention has said
};

// The catalog of a root: plain functions over its directory, usable without a Checkpointer and
// without MPI. Checkpoint `step` lives in ROOT/step-<8 digits>; a directory counts as committed
// once its manifest is in place.

struct CheckpointInfo {
  std::string dir;
  int64_t step = -1;
  bool committed = false;
  std::optional<Manifest> manifest;  // set when committed and readable
  std::string problem;               // why the manifest could not be read
  std::vector<std::string> tags;     // the tags that name it, sorted
};

// Non-collective. Every checkpoint directory under root (committed or not), oldest first.
std::vector<CheckpointInfo> ListCheckpoints(const std::string& root, Env* env = nullptr);
// Non-collective. The newest committed checkpoint's directory, if any.
std::optional<std::string> LatestCheckpoint(const std::string& root, Env* env = nullptr);
// Non-collective. The directory of committed checkpoint `step` under root, if there is one.
std::optional<std::string> FindCheckpoint(const std::string& root, int64_t step,
                                          Env* env = nullptr);

// Non-collective. The newest committed checkpoint that passes VerifyCheckpoint; each damaged
// newer one is reported through `log` ("skipping ...: reason").
std::optional<std::string> LatestVerifiedCheckpoint(
    const std::string& root, const std::function<void(const std::string&)>& log = nullptr,
    Env* env = nullptr);

// Tags name checkpoints ("best", "before-lr-drop"): ROOT/tags/NAME holds the name of the
// checkpoint directory it points to. A tag names one checkpoint; tagging again moves it. Names:
// 1-100 of [A-Za-z0-9._-], not starting with '.' (kInvalidArgument otherwise).
// Non-collective. Tags committed checkpoint `dir` (kNotFound when it is not one).
Status TagCheckpoint(const std::string& dir, const std::string& tag, Env* env = nullptr);
// Non-collective. Removes a tag (the checkpoint stays); kNotFound when there is no such tag.
Status RemoveTag(const std::string& root, const std::string& tag, Env* env = nullptr);
// Non-collective. Every tag of root and the directory it names.
std::map<std::string, std::string> ListTags(const std::string& root, Env* env = nullptr);
// Non-collective. The directory tag `tag` names; kNotFound when there is no such tag or its
// checkpoint is gone.
Result<std::string> FindTag(const std::string& root, const std::string& tag, Env* env = nullptr);

// What CollectGarbage did with each directory it meant to remove.
struct GcReport {
  std::vector<std::string> removed;  // gone
  std::vector<std::string> in_use;   // left for a later pass: a save or a load holds it
  std::vector<std::string> failed;   // still there, partly or whole: "DIR: the error"
};

// Non-collective. Removes uncommitted leftovers and the committed checkpoints that `policy` does
// not keep; never the newest committed one, never a tagged one unless policy.keep_tagged is
// false (its tags then go with it), never one that a save or a load holds (see LoadGuard).
GcReport CollectGarbage(const std::string& root, const RetentionPolicy& policy, Env* env = nullptr);

// Holds a shared lock on a checkpoint directory while it is being read, so that retention in
// another process on this machine leaves it alone (flock on the directory).
class LoadGuard {
 public:
  explicit LoadGuard(const std::string& dir, Env* env = nullptr);
  ~LoadGuard();
  LoadGuard(const LoadGuard&) = delete;
  LoadGuard& operator=(const LoadGuard&) = delete;

 private:
  std::unique_ptr<FileLock> lock_;
};

struct VerifyReport {
  int64_t bytes_checked = 0;
  int tensors_checked = 0;
  std::vector<Status> problems;  // one per damaged shard or unreadable file
  bool ok() const { return problems.empty(); }
};
// Non-collective. Reads every byte of every shard and checks every checksum.
Result<VerifyReport> VerifyCheckpoint(const std::string& dir, Env* env = nullptr,
                                      const ProgressFn& progress = nullptr);

}  // namespace distckpt
