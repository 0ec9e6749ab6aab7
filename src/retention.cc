// Retention, fall back to the last good checkpoint, and the lock that keeps a checkpoint that
// is being loaded from being deleted.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "distckpt/checkpoint.h"

namespace distckpt {

LoadGuard::LoadGuard(const std::string& dir) {
  fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd_ >= 0) ::flock(fd_, LOCK_SH);
}

LoadGuard::~LoadGuard() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock
}

std::optional<std::string> LatestVerifiedCheckpoint(
    const std::string& root, const std::function<void(const std::string&)>& log) {
  auto all = ListCheckpoints(root);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (!it->committed) continue;
    auto report = VerifyCheckpoint(it->dir);
    if (report.ok() && report->ok()) return it->dir;
    if (log) {
      log("skipping " + it->dir + ": " +
          (report.ok() ? report->problems.front().ToString() : report.status().ToString()));
    }
  }
  return std::nullopt;
}

std::vector<std::string> CollectGarbage(const std::string& root, const RetentionPolicy& policy) {
  std::vector<std::string> removed;
  std::vector<CheckpointInfo> committed;
  for (CheckpointInfo& info : ListCheckpoints(root)) {
    const std::string name = info.dir.substr(info.dir.find_last_of('/') + 1);
    if (name.rfind(".tmp-", 0) == 0) {
      if (Env::Default()->RemoveAll(info.dir).ok()) removed.push_back(info.dir);
    } else if (info.committed && info.manifest) {
      committed.push_back(std::move(info));
    }
  }
  if (committed.empty() || !policy.active()) return removed;
  std::set<std::string> keep = {committed.back().dir};  // the newest, always
  for (int i = 0; i < policy.keep_last && i < static_cast<int>(committed.size()); ++i) {
    keep.insert(committed[committed.size() - 1 - i].dir);
  }
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
  for (int i = 0; i < policy.keep_best && i < static_cast<int>(scored.size()); ++i) {
    keep.insert(scored[i].second);
  }
  for (const auto& c : committed) {
    if (keep.count(c.dir)) continue;
    int fd = ::open(c.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) continue;
    // A load holds a shared lock: leave that checkpoint for a later pass.
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0 && Env::Default()->RemoveAll(c.dir).ok()) {
      removed.push_back(c.dir);
    }
    ::close(fd);
  }
  return removed;
}

std::vector<std::string> Checkpointer::CommittedNewestFirst() {
  std::string joined;
  if (comm().rank() == 0) {
    auto all = ListCheckpoints(root());
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (it->committed) joined += it->dir + '\n';
    }
  }
  ThrowIfError(comm().Broadcast(&joined, 0));
  std::vector<std::string> dirs;
  size_t start = 0;
  while (start < joined.size()) {
    size_t end = joined.find('\n', start);
    dirs.push_back(joined.substr(start, end - start));
    start = end + 1;
  }
  return dirs;
}

std::optional<std::string> Checkpointer::LoadNewestGood(
    const std::function<void(const std::string&)>& load,
    const std::function<void(const std::string&)>& log) {
  for (const std::string& dir : CommittedNewestFirst()) {
    try {
      load(dir);
      return dir;
    } catch (const Error& e) {
      const Code code = e.status().code();
      if (code != Code::kCorrupt && code != Code::kNotFound) throw;
      if (log) log("checkpoint " + dir + " is damaged (" + e.what() + "); falling back");
    }
  }
  return std::nullopt;
}

}  // namespace distckpt
