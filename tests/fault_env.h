// An Env that breaks on purpose: a write budget (then ENOSPC), failing fsync, failing rename.
#pragma once

#include <atomic>

#include "distckpt/env.h"

namespace distckpt::testing {

class FaultEnv : public EnvWrapper {
 public:
  FaultEnv() : EnvWrapper(Env::Default()) {}
  int64_t write_budget = -1;  // bytes of tensor data that may still be written; -1: unlimited
  bool fail_sync = false;
  bool fail_rename = false;

  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) override {
    auto file = target()->OpenWritable(path);
    if (!file.ok()) return file;
    return std::unique_ptr<WritableFile>(new FaultFile(this, std::move(file).value()));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (fail_rename) return IoError("cannot rename '" + from + "' to '" + to + "': injected fault");
    return target()->Rename(from, to);
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

}  // namespace distckpt::testing
