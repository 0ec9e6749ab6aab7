// The catalog: listing a root, the latest checkpoint, offline verification, falling back.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "io/shard_reader.h"
#include "layout/filename.h"

namespace distckpt {
namespace {

Env* OrDefault(Env* env) { return env ? env : Env::Default(); }

}  // namespace

std::vector<CheckpointInfo> ListCheckpoints(const std::string& root, Env* env) {
  env = OrDefault(env);
  std::vector<CheckpointInfo> out;
  auto names = env->ListDir(root);
  if (!names.ok()) return out;
  std::map<std::string, std::vector<std::string>> tags_of;  // dir -> its tags
  for (const auto& [tag, dir] : ListTags(root, env)) tags_of[dir].push_back(tag);
  for (const std::string& name : names.value()) {
    CheckpointInfo info;
    info.dir = JoinPath(root, name);
    const DirKind kind = ParseCheckpointDirName(name, &info.step);
    if (kind == DirKind::kOther) continue;
    if (kind == DirKind::kCommitted) {
      auto m = ReadManifest(info.dir, env);
      info.committed = env->Exists(JoinPath(info.dir, kManifestName));
      info.tags = tags_of[info.dir];
      if (m.ok()) {
        info.manifest = std::move(m).value();
      } else {
        info.problem = m.status().ToString();
      }
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    return a.step != b.step ? a.step < b.step : a.dir < b.dir;
  });
  return out;
}

std::optional<std::string> LatestCheckpoint(const std::string& root, Env* env) {
  std::optional<std::string> latest;
  for (const CheckpointInfo& info : ListCheckpoints(root, env)) {
    if (info.committed && info.manifest) latest = info.dir;
  }
  return latest;
}

Result<VerifyReport> VerifyCheckpoint(const std::string& dir, Env* env,
                                      const ProgressFn& progress) {
  env = OrDefault(env);
  ASSIGN_OR_RETURN(Manifest manifest, ReadManifest(dir, env));
  VerifyReport report;
  ShardReader reader(env, dir, &manifest, 0);
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
    for (const ShardRecord& s : t.shards) {
      Status st = reader.Verify(t, s);
      if (!st.ok()) report.problems.push_back(st);
    }
  }
  report.bytes_checked = reader.stats().bytes_verified;
  return report;
}

std::optional<std::string> LatestVerifiedCheckpoint(
    const std::string& root, const std::function<void(const std::string&)>& log, Env* env) {
  auto all = ListCheckpoints(root, env);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (!it->committed) continue;
    auto report = VerifyCheckpoint(it->dir, env);
    if (report.ok() && report->ok()) return it->dir;
    if (log) {
      log("skipping " + it->dir + ": " +
          (report.ok() ? report->problems.front().ToString() : report.status().ToString()));
    }
  }
  return std::nullopt;
}

std::optional<std::string> FindCheckpoint(const std::string& root, int64_t step, Env* env) {
  env = OrDefault(env);
  const std::string dir = JoinPath(root, CheckpointDirName(step));
  if (!env->Exists(JoinPath(dir, kManifestName))) return std::nullopt;
  return dir;
}

std::vector<std::string> Checkpointer::CommittedNewestFirst(const std::string& root) {
  std::string joined;
  if (comm_.rank() == 0) {
    auto all = ListCheckpoints(root, env_);
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (it->committed) joined += it->dir + '\n';
    }
  }
  ThrowIfError(comm_.Broadcast(&joined, 0));
  std::vector<std::string> dirs;
  size_t start = 0;
  while (start < joined.size()) {
    size_t end = joined.find('\n', start);
    dirs.push_back(joined.substr(start, end - start));
    start = end + 1;
  }
  return dirs;
}

namespace {

std::string TrimSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

// `dir` and, when falling back, every committed checkpoint older than it under its root.
std::vector<std::string> Candidates(const std::string& dir, const std::vector<std::string>& all) {
  std::vector<std::string> out{dir};
  int64_t step = -1;
  const std::string name = BaseName(TrimSlashes(dir));
  if (ParseCheckpointDirName(name, &step) != DirKind::kCommitted) return out;
  for (const std::string& other : all) {
    int64_t other_step = -1;
    ParseCheckpointDirName(BaseName(other), &other_step);
    if (other_step < step) out.push_back(other);
  }
  return out;
}

bool IsDamage(const Error& e) {
  const Code code = e.status().code();
  return code == Code::kCorrupt || code == Code::kNotFound || code == Code::kIoError;
}

}  // namespace

std::string Checkpointer::LoadFallingBack(const std::string& dir, const LoadOptions& options,
                                          const std::function<void(const std::string&)>& load) {
  std::vector<std::string> candidates;
  if (dir.empty()) {
    if (root_.empty()) throw Error(InvalidArgument("no checkpoint named and no root to look in"));
    std::optional<std::string> latest = Latest();
    if (!latest) throw Error(NotFound("no committed checkpoint under '" + root_ + "'"));
    candidates = {*latest};
    if (options.fall_back) {
      for (const std::string& d : CommittedNewestFirst(root_)) {
        if (d != *latest) candidates.push_back(d);
      }
    }
  } else if (options.fall_back) {
    candidates = Candidates(dir, CommittedNewestFirst(DirName(TrimSlashes(dir))));
  } else {
    candidates = {dir};
  }
  for (size_t i = 0; i < candidates.size(); ++i) {
    try {
      load(candidates[i]);
      return candidates[i];
    } catch (const Error& e) {
      if (!options.fall_back || !IsDamage(e) || i + 1 == candidates.size()) throw;
      const std::string why =
          "checkpoint " + candidates[i] + " is damaged (" + e.what() + "); falling back";
      if (options.on_fall_back) {
        options.on_fall_back(why);
      } else if (comm_.rank() == 0) {
        std::fprintf(stderr, "distckpt: %s\n", why.c_str());
      }
    }
  }
  throw Error(Internal("no candidate to load"));  // not reached: the last one rethrows
}

}  // namespace distckpt
