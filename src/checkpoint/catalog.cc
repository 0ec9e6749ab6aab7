// The catalog: listing a root, the latest checkpoint, offline verification, finding a step.
#include <ATen/ATen.h>

#include <algorithm>
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

}  // namespace distckpt
