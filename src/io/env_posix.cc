#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "distckpt/env.h"

namespace distckpt {
namespace {

Status ErrnoStatus(const std::string& what, const std::string& path, int err) {
  return IoError(what + " '" + path + "': " + std::strerror(err));
}

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  Status PWrite(uint64_t offset, const void* data, size_t size) override {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::pwrite(fd_, p, size, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("cannot write " + std::to_string(size) + " bytes at offset " +
                               std::to_string(offset) + " of",
                           path_, errno);
      }
      if (n == 0)
        return IoError("write made no progress at offset " + std::to_string(offset) + " of '" +
                       path_ + "'");
      p += n;
      size -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }
  Status Sync() override {
    if (::fsync(fd_) != 0) return ErrnoStatus("cannot fsync", path_, errno);
    return Status::Ok();
  }
  Status Close() override {
    if (fd_ < 0) return Status::Ok();
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) return ErrnoStatus("cannot close", path_, errno);
    return Status::Ok();
  }
  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return ErrnoStatus("cannot set the size to " + std::to_string(size) + " bytes of", path_,
                         errno);
    }
    return Status::Ok();
  }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  int fd_;
};

// Holds an flock on a directory; closing the descriptor releases it.
class PosixFileLock : public FileLock {
 public:
  explicit PosixFileLock(int fd) : fd_(fd) {}
  ~PosixFileLock() override { ::close(fd_); }

 private:
  int fd_;
};

class PosixReadableFile : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixReadableFile() override {
    if (mapping_.data) ::munmap(const_cast<char*>(mapping_.data), mapping_.size);
    ::close(fd_);
  }
  // Mapped reads skip one copy per byte (verification hashes the page cache in place), which
  // is what brings loads to the storage limit.
  Mapping Map() override {
    if (mapping_.data || map_failed_) return mapping_;
    const char* off = std::getenv("DISTCKPT_MMAP");
    auto size = Size();
    map_failed_ = (off && std::strcmp(off, "0") == 0) || !size.ok() || size.value() == 0;
    if (map_failed_) return mapping_;
    void* p = ::mmap(nullptr, size.value(), PROT_READ, MAP_SHARED, fd_, 0);
    map_failed_ = p == MAP_FAILED;
    if (!map_failed_) mapping_ = {static_cast<const char*>(p), size.value()};
    return mapping_;
  }
  void Prefetch(uint64_t offset, size_t size) override {
    (void)::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(size),
                          POSIX_FADV_WILLNEED);
  }
  Status PRead(uint64_t offset, void* data, size_t size) override {
    char* p = static_cast<char*>(data);
    while (size > 0) {
      ssize_t n = ::pread(fd_, p, size, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("cannot read at offset " + std::to_string(offset) + " of", path_, errno);
      }
      if (n == 0) {
        return Corrupt("file '" + path_ + "' ends before offset " + std::to_string(offset) + " (" +
                       std::to_string(size) + " more bytes expected; truncated?)");
      }
      p += n;
      size -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }
  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoStatus("cannot stat", path_, errno);
    return static_cast<uint64_t>(st.st_size);
  }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  int fd_;
  Mapping mapping_;
  bool map_failed_ = false;
};

class PosixEnv : public Env {
 public:
  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("cannot open for writing", path, errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }
  Result<std::unique_ptr<WritableFile>> NewWritable(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("cannot create", path, errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return NotFound("file '" + path + "' does not exist");
      return ErrnoStatus("cannot open for reading", path, errno);
    }
    return std::unique_ptr<ReadableFile>(new PosixReadableFile(path, fd));
  }
  Status CreateDir(const std::string& path) override {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return IoError("cannot create directory '" + path + "': " + ec.message());
    return Status::Ok();
  }
  Status RemoveAll(const std::string& path) override {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
    if (ec) return IoError("cannot remove '" + path + "': " + ec.message());
    return Status::Ok();
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus("cannot rename '" + from + "' to", to, errno);
    }
    return Status::Ok();
  }
  Status Exchange(const std::string& a, const std::string& b) override {
    if (::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) != 0) {
      return ErrnoStatus("cannot exchange '" + a + "' with", b, errno);
    }
    return Status::Ok();
  }
  Status SyncDir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("cannot open directory", path, errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoStatus("cannot fsync directory", path, err);
    return Status::Ok();
  }
  Result<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* dir = ::opendir(path.c_str());
    if (!dir) {
      if (errno == ENOENT) return NotFound("directory '" + path + "' does not exist");
      return ErrnoStatus("cannot list directory", path, errno);
    }
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(dir);
    return names;
  }
  bool Exists(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  }
  bool IsDirectory(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }
  Result<int64_t> AvailableBytes(const std::string& path) override {
    struct statvfs fs;
    if (::statvfs(path.c_str(), &fs) != 0)
      return ErrnoStatus("cannot stat file system of", path, errno);
    return static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize);
  }
  Result<std::unique_ptr<FileLock>> LockDir(const std::string& path, LockMode mode) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("cannot open directory", path, errno);
    const int op = mode == LockMode::kShared ? LOCK_SH : LOCK_EX | LOCK_NB;
    if (::flock(fd, op) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) return Status(Code::kAborted, "'" + path + "' is in use (locked)");
      return ErrnoStatus("cannot lock", path, err);
    }
    return std::unique_ptr<FileLock>(new PosixFileLock(fd));
  }
};

}  // namespace

Env* Env::Default() {
  static PosixEnv* env = new PosixEnv();
  return env;
}

}  // namespace distckpt
