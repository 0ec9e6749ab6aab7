#include "storage/checksum.h"

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

}  // namespace distckpt
