// Tags: names for checkpoints, one small file per tag under ROOT/tags/ holding the directory name
// of the checkpoint it names (written to a temporary file and renamed: a tag moves atomically).
#include "checkpoint/tags.h"

#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "io/file_util.h"
#include "layout/filename.h"

namespace distckpt {
namespace {

// The checkpoint directory name a tag file holds, or "" when it holds none.
std::string ReadTag(Env* env, const std::string& path) {
  auto bytes = ReadWholeFile(env, path, 256);
  if (!bytes.ok()) return "";
  std::string name = bytes.value();
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  int64_t step = 0;
  return ParseCheckpointDirName(name, &step) == DirKind::kCommitted ? name : "";
}

}  // namespace

Status CheckTagName(const std::string& tag) {
  if (IsValidTagName(tag)) return Status::Ok();
  return InvalidArgument("'" + tag +
                         "' cannot name a tag: use 1-100 letters, digits, '.', '_' or '-', not "
                         "starting with '.' nor ending in '.tmp'");
}

Status TagCheckpoint(const std::string& dir, const std::string& tag, Env* env) {
  env = EnvOrDefault(env);
  RETURN_IF_ERROR(CheckTagName(tag));
  int64_t step = 0;
  const std::string name = BaseName(dir);
  if (ParseCheckpointDirName(name, &step) != DirKind::kCommitted ||
      !env->Exists(JoinPath(dir, kManifestName))) {
    return NotFound("'" + dir + "' is not a committed checkpoint; nothing tagged '" + tag + "'");
  }
  const std::string root = DirName(dir);
  const std::string tags = JoinPath(root, kTagsDirName);
  if (!env->IsDirectory(tags))
    RETURN_IF_ERROR(env->CreateDir(tags).Annotate("tagging '" + tag + "'"));
  const std::string path = JoinPath(tags, tag);
  RETURN_IF_ERROR(WriteFileDurably(env, TmpFileName(path), name + "\n"));
  RETURN_IF_ERROR(env->Rename(TmpFileName(path), path));
  return env->SyncDir(tags);
}

Status RemoveTag(const std::string& root, const std::string& tag, Env* env) {
  env = EnvOrDefault(env);
  RETURN_IF_ERROR(CheckTagName(tag));
  const std::string path = JoinPath(JoinPath(root, kTagsDirName), tag);
  if (!env->Exists(path)) return NotFound("no tag '" + tag + "' in '" + root + "'");
  RETURN_IF_ERROR(env->RemoveAll(path));
  return env->SyncDir(JoinPath(root, kTagsDirName));
}

std::map<std::string, std::string> ListTags(const std::string& root, Env* env) {
  env = EnvOrDefault(env);
  std::map<std::string, std::string> out;
  const std::string tags = JoinPath(root, kTagsDirName);
  auto names = env->ListDir(tags);
  if (!names.ok()) return out;
  for (const std::string& tag : names.value()) {
    if (!IsValidTagName(tag)) continue;  // e.g. a tag being written
    const std::string name = ReadTag(env, JoinPath(tags, tag));
    if (!name.empty()) out[tag] = JoinPath(root, name);
  }
  return out;
}

Result<std::string> FindTag(const std::string& root, const std::string& tag, Env* env) {
  env = EnvOrDefault(env);
  RETURN_IF_ERROR(CheckTagName(tag));
  const std::string name = ReadTag(env, JoinPath(JoinPath(root, kTagsDirName), tag));
  if (name.empty()) return NotFound("no tag '" + tag + "' in '" + root + "'");
  const std::string dir = JoinPath(root, name);
  if (!env->Exists(JoinPath(dir, kManifestName))) {
    return NotFound("tag '" + tag + "' names '" + dir + "', which is gone");
  }
  return dir;
}

}  // namespace distckpt
