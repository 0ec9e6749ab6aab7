// Status and Result: errors as values for the storage, communication and format layers.
//
// A Status is either OK or carries a code and a message. Layers annotate a Status as it
// travels up (tensor name, file, offset, rank), so the message that reaches the user says
// what failed and where. The public API (checkpoint.h) converts a failed Status into a
// distckpt::Error exception. Status and Result are plain values: thread-compatible.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace distckpt {

enum class Code {
  kOk = 0,
  kInvalidArgument,  // the caller's input (model, tree, options) is wrong
  kNotFound,         // a file, directory, tensor or checkpoint is missing
  kCorrupt,          // bytes on disk do not match what the manifest promises
  kIoError,          // the operating system refused a read, write, sync or rename
  kMismatch,         // the checkpoint and the caller disagree (shape, dtype, names)
  kAborted,          // another rank failed, so this rank stopped too
  kInternal,
};

const char* CodeName(Code code);

class Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context` ("tensor 'w': ...").
  Status Annotate(const std::string& context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) {
  return Status(Code::kInvalidArgument, std::move(m));
}
inline Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
inline Status Corrupt(std::string m) { return Status(Code::kCorrupt, std::move(m)); }
inline Status IoError(std::string m) { return Status(Code::kIoError, std::move(m)); }
inline Status Mismatch(std::string m) { return Status(Code::kMismatch, std::move(m)); }
inline Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }

// The one exception type of the public API.
class Error : public std::runtime_error {
 public:
  explicit Error(const Status& status) : std::runtime_error(status.ToString()), status_(status) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

// A value or the Status explaining why there is none.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {
    if (status_.ok()) status_ = Internal("Result constructed from an OK status without a value");
  }
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  // The accessors check: reading the value of a failed Result throws its Error (a test that
  // forgets to check ok() fails with the message instead of reading garbage).
  T& value() & { return Checked(); }
  const T& value() const& { return Checked(); }
  T&& value() && { return std::move(Checked()); }
  T* operator->() { return &Checked(); }
  const T* operator->() const { return &Checked(); }
  T& operator*() & { return Checked(); }
  const T& operator*() const& { return Checked(); }

 private:
  T& Checked() {
    if (!value_) throw Error(status_);
    return *value_;
  }
  const T& Checked() const {
    if (!value_) throw Error(status_);
    return *value_;
  }

  Status status_;
  std::optional<T> value_;
};

inline void ThrowIfError(const Status& status) {
  if (!status.ok()) throw Error(status);
}
template <typename T>
T ValueOrThrow(Result<T> result) {
  ThrowIfError(result.status());
  return std::move(result).value();
}

}  // namespace distckpt
