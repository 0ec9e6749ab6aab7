#include "layout/filename.h"

#include <cstdio>

namespace distckpt {
namespace {

constexpr char kStepPrefix[] = "step-";
constexpr char kTmpPrefix[] = ".tmp-step-";
constexpr size_t kStepDigits = 8;

bool ParseDigits(const std::string& name, size_t at, int64_t* step) {
  if (name.size() < at + kStepDigits) return false;
  const std::string digits = name.substr(at, kStepDigits);
  if (digits.find_first_not_of("0123456789") != std::string::npos) return false;
  *step = std::stoll(digits);
  return true;
}

bool StartsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

std::string CheckpointDirName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return buf;
}

std::string TmpCheckpointDirName(int64_t step, const std::string& nonce) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08lld-", kTmpPrefix, static_cast<long long>(step));
  return buf + nonce;
}

std::string RankFileName(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank-%05d.h5", rank);
  return buf;
}

std::string TmpFileName(const std::string& name) { return name + ".tmp"; }

bool IsValidTagName(const std::string& name) {
  if (name.empty() || name.size() > 100 || name[0] == '.') return false;
  if (name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

DirKind ParseCheckpointDirName(const std::string& name, int64_t* step) {
  const size_t step_len = sizeof(kStepPrefix) - 1, tmp_len = sizeof(kTmpPrefix) - 1;
  if (StartsWith(name, kStepPrefix) && name.size() == step_len + kStepDigits &&
      ParseDigits(name, step_len, step)) {
    return DirKind::kCommitted;
  }
  if (StartsWith(name, kTmpPrefix) && ParseDigits(name, tmp_len, step)) return DirKind::kTemporary;
  return DirKind::kOther;
}

std::string JoinPath(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string PackDatasetName(const std::string& dtype_name) {
  return "_distckpt/pack/" + dtype_name;
}

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace distckpt
