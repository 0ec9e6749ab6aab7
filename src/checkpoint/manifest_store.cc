// manifest.h5 and manifest.xxh3 on disk, through the Env.
#include <cstdio>

#include "core/checksum.h"
#include "core/status_macros.h"
#include "distckpt/manifest_io.h"
#include "hdf5/manifest_file.h"
#include "io/file_util.h"
#include "layout/filename.h"

namespace distckpt {
namespace {

// A manifest of a million tensors stays far below this; a larger file is damage.
constexpr uint64_t kMaxManifestBytes = uint64_t{16} << 30;

std::string SumText(const std::string& bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%016llx\n",
                static_cast<unsigned long long>(HashBytes(bytes.data(), bytes.size())));
  return text;
}

// Checks manifest.h5's bytes against manifest.xxh3 when the sum file exists.
Status CheckSum(Env* env, const std::string& dir, const std::string& path,
                const std::string& bytes) {
  const std::string sum_path = JoinPath(dir, kManifestSumName);
  if (!env->Exists(sum_path)) return Status::Ok();  // written by every version that reads it
  auto recorded = ReadWholeFile(env, sum_path, 64);
  if (!recorded.ok() && recorded.status().code() == Code::kIoError) return recorded.status();
  if (!recorded.ok() || recorded.value() != SumText(bytes)) {
    return Corrupt("'" + path + "' fails its xxh3 checksum in " + kManifestSumName +
                   " (bit rot or truncation)");
  }
  return Status::Ok();
}

}  // namespace

Status WriteManifest(Env* env, const std::string& dir, const Manifest& manifest) {
  ASSIGN_OR_RETURN(std::string bytes, EncodeManifestFile(manifest));
  const std::string path = JoinPath(dir, kManifestName);
  const std::string sum_path = JoinPath(dir, kManifestSumName);
  RETURN_IF_ERROR(WriteFileDurably(env, TmpFileName(path), bytes));
  RETURN_IF_ERROR(WriteFileDurably(env, TmpFileName(sum_path), SumText(bytes)));
  // The sum goes in first: a manifest without its sum is never visible.
  RETURN_IF_ERROR(env->Rename(TmpFileName(sum_path), sum_path));
  return env->Rename(TmpFileName(path), path);
}

Result<Manifest> ReadManifest(const std::string& dir, Env* env) {
  if (!env) env = Env::Default();
  const std::string path = JoinPath(dir, kManifestName);
  if (!env->IsDirectory(dir)) return NotFound("checkpoint directory '" + dir + "' does not exist");
  if (!env->Exists(path)) {
    return NotFound("'" + dir + "' has no " + kManifestName + " (not a committed checkpoint)");
  }
  auto bytes = ReadWholeFile(env, path, kMaxManifestBytes);
  if (!bytes.ok()) {
    if (bytes.status().code() == Code::kIoError) return bytes.status();
    return Corrupt(bytes.status().message());
  }
  RETURN_IF_ERROR(CheckSum(env, dir, path, bytes.value()));
  return DecodeManifestFile(bytes.value(), path);
}

}  // namespace distckpt
