// The catalog: listing a root, the latest checkpoint, offline verification, falling back.
#include <ATen/ATen.h>

#include <algorithm>

#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "io/shard_reader.h"
#include "layout/filename.h"

namespace distckpt {
namespace {

Env* OrDefault(Env* env) { return env ? env : Env::Default(); }

// Reads every byte of one shard in bounded slices; the first problem is returned.
Status VerifyShard(ShardReader& reader, const TensorRecord& t, const ShardRecord& s,
                   std::vector<char>& buffer) {
  const int64_t esize = c10::elementSize(t.dtype);
  const int64_t slice = std::max<int64_t>(1, (64 << 20) / esize);
  for (int64_t e = 0; e < s.flat_count; e += slice) {
    const int64_t n = std::min(slice, s.flat_count - e);
    buffer.resize(static_cast<size_t>(n * esize));
    RETURN_IF_ERROR(reader.Read(t, s, e, n, buffer.data()));
  }
  return Status::Ok();
}

}  // namespace

std::vector<CheckpointInfo> ListCheckpoints(const std::string& root, Env* env) {
  env = OrDefault(env);
  std::vector<CheckpointInfo> out;
  auto names = env->ListDir(root);
  if (!names.ok()) return out;
  for (const std::string& name : names.value()) {
    CheckpointInfo info;
    info.dir = JoinPath(root, name);
    const DirKind kind = ParseCheckpointDirName(name, &info.step);
    if (kind == DirKind::kOther) continue;
    if (kind == DirKind::kCommitted) {
      auto m = ReadManifest(info.dir, env);
      info.committed = env->Exists(JoinPath(info.dir, kManifestName));
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
  std::vector<char> buffer;
  for (const TensorRecord& t : manifest.tensors) {
    ++report.tensors_checked;
    done += t.nbytes();
    if (progress) progress(done, total);
    for (const ShardRecord& s : t.shards) {
      Status st = VerifyShard(reader, t, s, buffer);
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

std::optional<std::string> Checkpointer::Latest() {
  std::string dir;
  if (comm_.rank() == 0) dir = LatestCheckpoint(root_, env_).value_or("");
  ThrowIfError(comm_.Broadcast(&dir, 0));
  if (dir.empty()) return std::nullopt;
  return dir;
}

std::vector<std::string> Checkpointer::CommittedNewestFirst() {
  std::string joined;
  if (comm_.rank() == 0) {
    auto all = ListCheckpoints(root_, env_);
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
