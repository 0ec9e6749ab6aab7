// Env: the file-system operations distckpt's storage layer performs, behind an interface.
//
// Every byte of tensor data, every fsync and every rename of a checkpoint goes through an
// Env, so tests can inject faults (short writes, ENOSPC, failed fsync or rename) by wrapping
// the default one with EnvWrapper. HDF5's own metadata I/O does not pass through it.
// Env::Default() is thread-safe; file objects are thread-compatible.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distckpt/status.h"

namespace distckpt {

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Writes all `size` bytes at `offset`, or fails naming the file and offset.
  virtual Status PWrite(uint64_t offset, const void* data, size_t size) = 0;
  // Makes written data durable (fsync).
  virtual Status Sync() = 0;
  virtual Status Close() = 0;
  virtual const std::string& path() const = 0;
};

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Reads exactly `size` bytes at `offset`; a short read is an error naming file and offset.
  virtual Status PRead(uint64_t offset, void* data, size_t size) = 0;
  virtual Result<uint64_t> Size() = 0;
  virtual const std::string& path() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;
  static Env* Default();

  // Opens an existing file for writing without truncating it.
  virtual Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) = 0;
  virtual Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) = 0;
  virtual Status CreateDir(const std::string& path) = 0;
  // Removes a file or a directory tree; a missing path is not an error.
  virtual Status RemoveAll(const std::string& path) = 0;
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // Atomically swaps two existing paths (renameat2 RENAME_EXCHANGE).
  virtual Status Exchange(const std::string& a, const std::string& b) = 0;
  // fsyncs a directory so that renames and creations inside it are durable.
  virtual Status SyncDir(const std::string& path) = 0;
  virtual Result<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual bool Exists(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
};

// Forwards every call to `target`; override the calls a test wants to break.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }
  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& p) override {
    return target_->OpenWritable(p);
  }
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& p) override {
    return target_->OpenReadable(p);
  }
  Status CreateDir(const std::string& p) override { return target_->CreateDir(p); }
  Status RemoveAll(const std::string& p) override { return target_->RemoveAll(p); }
  Status Rename(const std::string& f, const std::string& t) override {
    return target_->Rename(f, t);
  }
  Status Exchange(const std::string& a, const std::string& b) override {
    return target_->Exchange(a, b);
  }
  Status SyncDir(const std::string& p) override { return target_->SyncDir(p); }
  Result<std::vector<std::string>> ListDir(const std::string& p) override {
    return target_->ListDir(p);
  }
  bool Exists(const std::string& p) override { return target_->Exists(p); }
  bool IsDirectory(const std::string& p) override { return target_->IsDirectory(p); }

 private:
  Env* target_;
};

std::string JoinPath(const std::string& a, const std::string& b);

}  // namespace distckpt
