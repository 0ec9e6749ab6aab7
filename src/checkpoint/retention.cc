// Retention: which committed checkpoints to keep, and removing the rest and leftovers.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "checkpoint/catalog.h"
#include "checkpoint/save_steps.h"
#include "distckpt/checkpoint.h"
#include "io/file_util.h"
#include "layout/filename.h"

namespace distckpt {
namespace {

// The K best checkpoints by policy.metric (those without a numeric, non-NaN metric never count).
std::vector<std::string> BestByMetric(const std::vector<CheckpointInfo>& committed,
                                      const RetentionPolicy& policy) {
  std::vector<std::pair<double, std::string>> scored;
  for (const auto& c : committed) {
    auto it = c.manifest->scalars.find(policy.metric);
    if (it == c.manifest->scalars.end()) continue;
    double v;
    if (auto* d = std::get_if<double>(&it->second)) {
      v = *d;
    } else if (auto* i = std::get_if<int64_t>(&it->second)) {
      v = static_cast<double>(*i);
    } else {
      continue;
    }
    if (std::isnan(v)) continue;
    scored.emplace_back(policy.lower_is_better ? v : -v, c.dir);
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> best;
  for (int i = 0; i < policy.keep_best && i < static_cast<int>(scored.size()); ++i) {
    best.push_back(scored[i].second);
  }
  return best;
}

}  // namespace

LoadGuard::LoadGuard(const std::string& dir, Env* env) {
  auto lock = EnvOrDefault(env)->LockDir(dir, LockMode::kShared);
  if (lock.ok()) lock_ = std::move(lock).value();  // without it, only the protection is lost
}

LoadGuard::~LoadGuard() = default;

GcReport CollectGarbage(const std::string& root, const RetentionPolicy& policy, Env* env) {
  if (!env) env = Env::Default();
  GcReport report;
  // Files each removal under `dir` by its outcome; true when the directory is gone.
  auto account = [&report](const std::string& dir, const Status& st) {
    if (st.ok()) {
      report.removed.push_back(dir);
    } else if (st.code() == Code::kAborted) {
      report.in_use.push_back(dir);
    } else {
      report.failed.push_back(dir + ": " + st.ToString());
    }
    return st.ok();
  };
  // A root that cannot be listed is a failure to say, not an empty root.
  auto listed = ListCheckpointsOrError(root, env);
  if (!listed.ok()) {
    report.failed.push_back(root + ": " + listed.status().ToString());
    return report;
  }
  std::vector<CheckpointInfo> committed;
  for (CheckpointInfo& info : listed.value()) {
    int64_t step = 0;
    if (ParseCheckpointDirName(BaseName(info.dir), &step) == DirKind::kTemporary) {
      account(info.dir, RemoveLeftover(env, info.dir));
    } else if (info.committed && info.manifest) {
      committed.push_back(std::move(info));
    }
  }
  if (committed.empty() || !policy.active()) return report;
  std::set<std::string> keep = {committed.back().dir};  // the newest, always
  for (int i = 0; i < policy.keep_last && i < static_cast<int>(committed.size()); ++i) {
    keep.insert(committed[committed.size() - 1 - i].dir);
  }
  for (const std::string& dir : BestByMetric(committed, policy)) keep.insert(dir);
  for (const auto& c : committed) {
    if (policy.keep_tagged && !c.tags.empty()) keep.insert(c.dir);
  }
  for (const auto& c : committed) {
    if (keep.count(c.dir)) continue;
    // A load holds a shared lock: leave that checkpoint for a later pass.
    auto lock = env->LockDir(c.dir, LockMode::kExclusiveNoWait);
    if (!account(c.dir, lock.ok() ? env->RemoveAll(c.dir) : lock.status())) continue;
    for (const std::string& tag : c.tags) (void)RemoveTag(root, tag, env);
  }
  return report;
}

void Checkpointer::NoteRetention(const GcReport& report) {
  for (const std::string& failure : report.failed) {
    save_stats_.retention_failed.push_back(failure);
    const std::string dir = failure.substr(0, failure.find(": "));
    if (std::find(retention_warned_.begin(), retention_warned_.end(), dir) !=
        retention_warned_.end()) {
      continue;
    }
    retention_warned_.push_back(dir);
    std::fprintf(stderr,
                 "distckpt: retention could not remove %s (left in place; later saves and "
                 "`distckpt gc` try again)\n",
                 failure.c_str());
  }
}

}  // namespace distckpt
