// Verified reads of stored shards: every byte read is checked against the manifest's xxh3
// piece checksums before it reaches the caller. Files are opened once and cached.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "distckpt/env.h"
#include "distckpt/manifest.h"
#include "distckpt/options.h"

namespace distckpt {

class ShardReader {
 public:
  // `manifest` (kept by the caller) lists each rank file's size and metadata checksum, checked
  // when the file is first opened.
  ShardReader(Env* env, std::string dir, const Manifest* manifest, int rank)
      : env_(env),
        dir_(std::move(dir)),
        manifest_(manifest),
        piece_bytes_(manifest->piece_bytes),
        rank_(rank) {}

  // Opens (once) and checks rank file `name`: size and every byte outside tensor data.
  Status CheckFile(const std::string& name);

  // Copies elements [elem_begin, elem_begin + count) of `shard` of `tensor` into `dest`,
  // verifying every piece they touch. Errors name the tensor, file, offset and rank.
  // With dest == nullptr the bytes are only verified (read into a bounded scratch buffer).
  Status Read(const TensorRecord& tensor, const ShardRecord& shard, int64_t elem_begin,
              int64_t count, void* dest);

  // Checks every byte of `shard` against its checksums, copying nothing out.
  Status Verify(const TensorRecord& tensor, const ShardRecord& shard) {
    return Read(tensor, shard, 0, shard.flat_count, nullptr);
  }

  // CheckFile, then every byte of every shard stored in rank file `name`.
  Status VerifyFile(const std::string& name);

  // Elements [begin, begin + count) of the flattened tensor into `dest`, from whichever of its
  // shards hold them.
  Status ReadElements(const TensorRecord& tensor, int64_t begin, int64_t count, void* dest);

  // Read through memory mappings where the Env offers them (the default: one copy per byte
  // less). A reader that passes over every byte once, as an export does, reads with pread
  // instead, so that its resident size stays its own buffers rather than the mapped files.
  void set_mapped(bool mapped) { mapped_ = mapped; }

  const LoadStats& stats() const { return stats_; }

 private:
  // Byte positions within one shard: the wanted [b0, b1) and the pieces [first, last) read.
  struct Range {
    int64_t shard_bytes = 0, b0 = 0, b1 = 0, first = 0, last = 0;
  };
  Result<ReadableFile*> File(const std::string& name);
  void CollectDataRanges();
  // From a mapped file (`data`: the shard's first byte), or through PRead into `out` or scratch.
  Status ReadMapped(const char* data, const ShardRecord& shard, const Range& range,
                    const std::string& where, ReadableFile* file, char* out);
  Status ReadCopied(ReadableFile* file, const ShardRecord& shard, const Range& range,
                    const std::string& where, char* out);
  Status Mismatch(const std::string& where, const ShardRecord& shard, int64_t piece_start,
                  int64_t len) const;

  Env* env_;
  std::string dir_;
  const Manifest* manifest_;
  int64_t piece_bytes_;
  int rank_;
  std::map<std::string, std::unique_ptr<ReadableFile>> files_;
  // Per rank file, the byte ranges of tensor data (everything else is HDF5 metadata).
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> data_ranges_;
  std::vector<char> scratch_;
  bool mapped_ = true;
  LoadStats stats_;
};

}  // namespace distckpt
