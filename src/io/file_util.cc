#include "io/file_util.h"

#include "core/status_macros.h"

namespace distckpt {

Status WriteFileDurably(Env* env, const std::string& path, const std::string& bytes) {
  ASSIGN_OR_RETURN(auto file, env->NewWritable(path));
  RETURN_IF_ERROR(file->PWrite(0, bytes.data(), bytes.size()));
  RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

Result<std::string> ReadWholeFile(Env* env, const std::string& path, uint64_t max_bytes) {
  ASSIGN_OR_RETURN(auto file, env->OpenReadable(path));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size > max_bytes) {
    return Corrupt("'" + path + "' has " + std::to_string(size) + " bytes, more than the " +
                   std::to_string(max_bytes) + " such a file can have");
  }
  std::string bytes(size, '\0');
  RETURN_IF_ERROR(file->PRead(0, bytes.data(), bytes.size()));
  return bytes;
}

}  // namespace distckpt
