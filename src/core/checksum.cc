#include "core/checksum.h"

#include <xxhash.h>

namespace distckpt {

uint64_t HashBytes(const void* data, size_t size) { return XXH3_64bits(data, size); }

std::vector<uint64_t> PieceHashes(const void* data, size_t size, size_t piece) {
  std::vector<uint64_t> hashes;
  const char* p = static_cast<const char*>(data);
  for (size_t off = 0; off < size; off += piece) {
    hashes.push_back(HashBytes(p + off, std::min(piece, size - off)));
  }
  return hashes;
}

bool HashOutside(uint64_t size, const std::vector<std::pair<uint64_t, uint64_t>>& data,
                 const std::function<bool(uint64_t, void*, size_t)>& read, uint64_t* hash) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  std::vector<char> buffer;
  uint64_t pos = 0;
  bool ok = true;
  auto take = [&](uint64_t from, uint64_t to) {
    for (uint64_t at = from; ok && at < to; at += 1 << 20) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(1 << 20, to - at));
      buffer.resize(n);
      ok = read(at, buffer.data(), n);
      if (ok) XXH3_64bits_update(state, buffer.data(), n);
    }
  };
  for (const auto& [begin, end] : data) {
    if (begin > pos) take(pos, std::min(begin, size));
    pos = std::max(pos, end);
  }
  if (pos < size) take(pos, size);
  *hash = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return ok;
}

}  // namespace distckpt
