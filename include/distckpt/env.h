// Env: every file-system operation distckpt performs, behind an interface (model: leveldb's Env).
//
// Saving, loading, listing, retention, verify, export and import open, read, write, fsync,
// rename, list, remove and lock through an Env, so tests can inject a fault into any one call
// (short writes, ENOSPC, failed fsync, rename or lock) by wrapping the default with EnvWrapper.
// HDF5's own I/O of rank files goes through it too (an HDF5 file driver over Env,
// src/hdf5/env_driver.h); the manifest is encoded in memory and written through the Env.
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
  // Sets the file's size (extending with zeros or cutting).
  virtual Status Truncate(uint64_t size) = 0;
  virtual const std::string& path() const = 0;
};

// A lock held on a directory until the object is destroyed.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

enum class LockMode {
  kShared,           // waits; many holders (a load reading a checkpoint)
  kExclusiveNoWait,  // fails at once with kAborted if anyone holds the lock (retention)
};

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Reads exactly `size` bytes at `offset`; a short read is an error naming file and offset.
  virtual Status PRead(uint64_t offset, void* data, size_t size) = 0;
  virtual Result<uint64_t> Size() = 0;
  virtual const std::string& path() const = 0;

  // The whole file mapped read-only (valid while this object lives), or {nullptr, 0} when it is
  // not mapped (the default; readers then use PRead). Readers of a mapped file must stay within
  // `size`; bytes that storage cannot deliver end the process with SIGBUS instead of an error,
  // which is why only the default Env maps, and DISTCKPT_MMAP=0 turns it off.
  struct Mapping {
    const char* data = nullptr;
    uint64_t size = 0;
  };
  virtual Mapping Map() { return {}; }
  // A hint that [offset, offset + size) will be read soon (asynchronous read-ahead).
  virtual void Prefetch(uint64_t offset, size_t size) {
    (void)offset;
    (void)size;
  }
};

class Env {
 public:
  virtual ~Env() = default;
  static Env* Default();

  // Opens an existing file for writing without truncating it.
  virtual Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) = 0;
  // Creates `path`, or truncates it when it exists, and opens it for writing.
  virtual Result<std::unique_ptr<WritableFile>> NewWritable(const std::string& path) = 0;
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
  // Bytes free to an unprivileged writer on the file system that holds `path` (statvfs).
  virtual Result<int64_t> AvailableBytes(const std::string& path) = 0;
  // Locks a directory (flock): shared locks wait, an exclusive one does not.
  virtual Result<std::unique_ptr<FileLock>> LockDir(const std::string& path, LockMode mode) = 0;
};

// Forwards every call to `target`; override the calls a test wants to break.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }
  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& p) override {
    return target_->OpenWritable(p);
  }
  Result<std::unique_ptr<WritableFile>> NewWritable(const std::string& p) override {
    return target_->NewWritable(p);
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
  Result<int64_t> AvailableBytes(const std::string& p) override {
    return target_->AvailableBytes(p);
  }
  Result<std::unique_ptr<FileLock>> LockDir(const std::string& p, LockMode m) override {
    return target_->LockDir(p, m);
  }

 private:
  Env* target_;
};

}  // namespace distckpt
