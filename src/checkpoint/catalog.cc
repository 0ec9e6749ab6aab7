// The catalog: listing a root, the latest checkpoint, offline verification, finding a step.
#include "checkpoint/catalog.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>

#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "io/file_util.h"
#include "io/shard_reader.h"
#include "layout/filename.h"

namespace distckpt {
namespace {}  // namespace

Result<std::vector<CheckpointInfo>> ListCheckpointDirs(const std::string& root, Env* env) {
  env = EnvOrDefault(env);
  ASSIGN_OR_RETURN(const std::vector<std::string> names, env->ListDir(root));
  std::vector<CheckpointInfo> out;
  for (const std::string& name : names) {
    CheckpointInfo info;
    info.dir = JoinPath(root, name);
    const DirKind kind = ParseCheckpointDirName(name, &info.step);
    if (kind == DirKind::kOther) continue;
    info.committed = kind == DirKind::kCommitted && env->Exists(JoinPath(info.dir, kManifestName));
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    return a.step != b.step ? a.step < b.step : a.dir < b.dir;
  });
  return out;
}

Result<std::vector<CheckpointInfo>> ListCheckpointsOrError(const std::string& root, Env* env) {
  env = EnvOrDefault(env);
  ASSIGN_OR_RETURN(std::vector<CheckpointInfo> out, ListCheckpointDirs(root, env));
  if (out.empty()) return out;
  std::map<std::string, std::vector<std::string>> tags_of;  // dir -> its tags
  for (const auto& [tag, dir] : ListTags(root, env)) tags_of[dir].push_back(tag);
  for (CheckpointInfo& info : out) {
    int64_t step = 0;
    if (ParseCheckpointDirName(BaseName(info.dir), &step) != DirKind::kCommitted) continue;
    info.tags = tags_of[info.dir];
    auto m = ReadManifest(info.dir, env);
    if (m.ok()) {
      info.manifest = std::move(m).value();
    } else {
      info.problem = m.status().ToString();
    }
  }
  return out;
}

std::vector<CheckpointInfo> ListCheckpoints(const std::string& root, Env* env) {
  auto all = ListCheckpointsOrError(root, env);
  return all.ok() ? std::move(all).value() : std::vector<CheckpointInfo>{};
}

std::optional<std::string> LatestCheckpoint(const std::string& root, Env* env) {
  // Newest first, reading manifests only until one reads: a root of many checkpoints costs one
  // manifest, not all of them.
  const auto all = ListCheckpointDirs(root, env);
  if (!all.ok()) return std::nullopt;
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    if (it->committed && ReadManifest(it->dir, EnvOrDefault(env)).ok()) return it->dir;
  }
  return std::nullopt;
}

Result<VerifyReport> VerifyCheckpoint(const std::string& dir, Env* env,
                                      const ProgressFn& progress) {
  env = EnvOrDefault(env);
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
  env = EnvOrDefault(env);
  const std::string dir = JoinPath(root, CheckpointDirName(step));
  if (!env->Exists(JoinPath(dir, kManifestName))) return std::nullopt;
  return dir;
}

}  // namespace distckpt
