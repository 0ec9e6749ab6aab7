// Little-endian byte encoding for metadata that crosses the communicator.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "distckpt/status.h"

namespace distckpt {

class ByteWriter {
 public:
  void PutI64(int64_t v) { out_.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
  void PutString(const std::string& s) {
    PutI64(static_cast<int64_t>(s.size()));
    out_.append(s);
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class ByteReader {
 public:
  explicit ByteReader(const std::string& in) : in_(in) {}
  bool GetI64(int64_t* v) {
    if (pos_ + sizeof(*v) > in_.size()) return false;
    std::memcpy(v, in_.data() + pos_, sizeof(*v));
    pos_ += sizeof(*v);
    return true;
  }
  bool GetString(std::string* s) {
    int64_t n;
    if (!GetI64(&n) || n < 0 || pos_ + static_cast<size_t>(n) > in_.size()) return false;
    s->assign(in_.data() + pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return true;
  }
  bool done() const { return pos_ == in_.size(); }
  size_t remaining() const { return in_.size() - pos_; }

 private:
  const std::string& in_;
  size_t pos_ = 0;
};

}  // namespace distckpt
