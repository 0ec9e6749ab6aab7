// xxHash3 checksums over fixed-size pieces of a byte range.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace distckpt {

uint64_t HashBytes(const void* data, size_t size);
// One hash per `piece` bytes (the last piece may be shorter).
std::vector<uint64_t> PieceHashes(const void* data, size_t size, size_t piece);

// xxh3 over every byte of [0, size) that lies outside `data` (sorted, disjoint [offset, end)
// intervals), read through `read(offset, buffer, length)`. Returns false if a read fails.
bool HashOutside(uint64_t size, const std::vector<std::pair<uint64_t, uint64_t>>& data,
                 const std::function<bool(uint64_t, void*, size_t)>& read, uint64_t* hash);

}  // namespace distckpt
