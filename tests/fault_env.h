// Envs that break on purpose: a write budget (then ENOSPC), failing fsync, failing rename,
// failing removal (FaultEnv); the k-th call of any kind failing (CountingEnv).
#pragma once

#include <atomic>
#include <string>

#include "core/status_macros.h"
#include "distckpt/env.h"

namespace distckpt::testing {

class FaultEnv : public EnvWrapper {
 public:
  FaultEnv() : EnvWrapper(Env::Default()) {}
  int64_t write_budget = -1;  // bytes of tensor data that may still be written; -1: unlimited
  bool fail_sync = false;
  bool fail_rename = false;
  bool fail_remove = false;  // as on a read-only mount

  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) override {
    auto file = target()->OpenWritable(path);
    if (!file.ok()) return file;
    return std::unique_ptr<WritableFile>(new FaultFile(this, std::move(file).value()));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (fail_rename) return IoError("cannot rename '" + from + "' to '" + to + "': injected fault");
    return target()->Rename(from, to);
  }
  Status RemoveAll(const std::string& path) override {
    if (fail_remove) return IoError("cannot remove '" + path + "': Read-only file system");
    return target()->RemoveAll(path);
  }

 private:
  class FaultFile : public WritableFile {
   public:
    FaultFile(FaultEnv* env, std::unique_ptr<WritableFile> base)
        : env_(env), base_(std::move(base)) {}
    Status PWrite(uint64_t offset, const void* data, size_t size) override {
      if (env_->write_budget >= 0 && static_cast<int64_t>(size) > env_->write_budget) {
        // Write what fits, like a disk that fills up part-way.
        size_t fits = static_cast<size_t>(env_->write_budget);
        env_->write_budget = 0;
        if (fits) base_->PWrite(offset, data, fits);
        return IoError("cannot write " + std::to_string(size) + " bytes at offset " +
                       std::to_string(offset + fits) + " of '" + path() +
                       "': No space left on device");
      }
      if (env_->write_budget >= 0) env_->write_budget -= static_cast<int64_t>(size);
      return base_->PWrite(offset, data, size);
    }
    Status Sync() override {
      if (env_->fail_sync) return IoError("cannot fsync '" + path() + "': Input/output error");
      return base_->Sync();
    }
    Status Close() override { return base_->Close(); }
    Status Truncate(uint64_t size) override { return base_->Truncate(size); }
    const std::string& path() const override { return base_->path(); }

   private:
    FaultEnv* env_;
    std::unique_ptr<WritableFile> base_;
  };
};

// Counts every call that can fail (file opens, reads, writes, fsyncs, renames, listings,
// removals, locks) and fails call number `fail_at` (1-based): an error return, and for a write a
// short write first. Queries returning bool (Exists, IsDirectory) are counted, never failed.
class CountingEnv : public EnvWrapper {
 public:
  CountingEnv() : EnvWrapper(Env::Default()) {}
  int calls = 0;
  int fail_at = 0;     // 0: never
  std::string failed;  // what the failed call was

  Status Tick(const std::string& what, const std::string& path) {
    if (++calls != fail_at) return Status::Ok();
    failed = what + " '" + path + "'";
    return IoError("injected fault: " + failed);
  }
  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& p) override {
    Status st = Tick("open for writing", p);
    if (!st.ok()) return st;
    return WrapWritable(target()->OpenWritable(p));
  }
  Result<std::unique_ptr<WritableFile>> NewWritable(const std::string& p) override {
    Status st = Tick("create", p);
    if (!st.ok()) return st;
    return WrapWritable(target()->NewWritable(p));
  }
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& p) override {
    Status st = Tick("open for reading", p);
    if (!st.ok()) return st;
    auto file = target()->OpenReadable(p);
    if (!file.ok()) return file;
    return std::unique_ptr<ReadableFile>(new Readable(this, std::move(file).value()));
  }
  Status CreateDir(const std::string& p) override {
    RETURN_IF_ERROR(Tick("mkdir", p));
    return target()->CreateDir(p);
  }
  Status RemoveAll(const std::string& p) override {
    RETURN_IF_ERROR(Tick("remove", p));
    return target()->RemoveAll(p);
  }
  Status Rename(const std::string& f, const std::string& t) override {
    RETURN_IF_ERROR(Tick("rename", f));
    return target()->Rename(f, t);
  }
  Status Exchange(const std::string& a, const std::string& b) override {
    RETURN_IF_ERROR(Tick("exchange", a));
    return target()->Exchange(a, b);
  }
  Status SyncDir(const std::string& p) override {
    RETURN_IF_ERROR(Tick("fsync directory", p));
    return target()->SyncDir(p);
  }
  Result<std::vector<std::string>> ListDir(const std::string& p) override {
    Status st = Tick("list", p);
    if (!st.ok()) return st;
    return target()->ListDir(p);
  }
  bool Exists(const std::string& p) override {
    ++calls;
    return target()->Exists(p);
  }
  bool IsDirectory(const std::string& p) override {
    ++calls;
    return target()->IsDirectory(p);
  }
  Result<std::unique_ptr<FileLock>> LockDir(const std::string& p, LockMode m) override {
    Status st = Tick("lock", p);
    if (!st.ok()) return st;
    return target()->LockDir(p, m);
  }

 private:
  class Writable : public WritableFile {
   public:
    Writable(CountingEnv* env, std::unique_ptr<WritableFile> base)
        : env_(env), base_(std::move(base)) {}
    Status PWrite(uint64_t offset, const void* data, size_t size) override {
      Status st = env_->Tick("write", path());
      if (!st.ok()) {
        if (size > 1) (void)base_->PWrite(offset, data, size / 2);  // a short write
        return st;
      }
      return base_->PWrite(offset, data, size);
    }
    Status Sync() override {
      RETURN_IF_ERROR(env_->Tick("fsync", path()));
      return base_->Sync();
    }
    Status Close() override {
      RETURN_IF_ERROR(env_->Tick("close", path()));
      return base_->Close();
    }
    Status Truncate(uint64_t size) override {
      RETURN_IF_ERROR(env_->Tick("truncate", path()));
      return base_->Truncate(size);
    }
    const std::string& path() const override { return base_->path(); }

   private:
    CountingEnv* env_;
    std::unique_ptr<WritableFile> base_;
  };
  class Readable : public ReadableFile {
   public:
    Readable(CountingEnv* env, std::unique_ptr<ReadableFile> base)
        : env_(env), base_(std::move(base)) {}
    Status PRead(uint64_t offset, void* data, size_t size) override {
      RETURN_IF_ERROR(env_->Tick("read", path()));
      return base_->PRead(offset, data, size);
    }
    Result<uint64_t> Size() override {
      Status st = env_->Tick("stat", path());
      if (!st.ok()) return st;
      return base_->Size();
    }
    const std::string& path() const override { return base_->path(); }

   private:
    CountingEnv* env_;
    std::unique_ptr<ReadableFile> base_;
  };
  Result<std::unique_ptr<WritableFile>> WrapWritable(Result<std::unique_ptr<WritableFile>> f) {
    if (!f.ok()) return f;
    return std::unique_ptr<WritableFile>(new Writable(this, std::move(f).value()));
  }
};

}  // namespace distckpt::testing
