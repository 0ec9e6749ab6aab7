// xxHash3 checksums over fixed-size pieces of a byte range.
#pragma once

#include <cstdint>
#include <vector>

namespace distckpt {

uint64_t HashBytes(const void* data, size_t size);
// One hash per `piece` bytes (the last piece may be shorter).
std::vector<uint64_t> PieceHashes(const void* data, size_t size, size_t piece);

}  // namespace distckpt
