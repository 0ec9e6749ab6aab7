// Manifest: the index of one checkpoint, written by rank 0 as manifest.h5 at commit time.
//
// It holds the format version, step, world size at save, creation time, library and LibTorch
// versions, the tree's scalars (epoch, loss, user metadata) and, for every tensor, its dtype,
// global shape, placement and shard table: which rank file and dataset holds which flat element
// range, at which byte offset, with xxHash3 checksums over fixed-size pieces of every shard.
// The index is stored as JSON in the dataset /_distckpt/index with its own checksum; the
// headline fields are also root attributes for h5py and h5dump. Plain data: thread-compatible.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "distckpt/status.h"
#include "distckpt/tree.h"

namespace distckpt {

// Version 2 packs small shards of a rank into one dataset per dtype (ShardRecord::packed);
// version 1 checkpoints (one dataset per shard) still load.
inline constexpr int kFormatVersion = 2;
inline constexpr int kOldestReadableFormatVersion = 1;

struct ShardRecord {
  int writer_rank = 0;
  std::string file;     // relative to the checkpoint directory
  std::string dataset;  // HDF5 path inside the file
  int64_t flat_start = 0;
  int64_t flat_count = 0;
  std::vector<int64_t> stored_shape;  // the dataset's shape; {flat_count} when packed
  uint64_t byte_offset = 0;           // where the data starts in the file
  std::vector<uint64_t> checksums;    // xxHash3-64 of each piece of piece_bytes
  // A packed shard is elements [pack_start, pack_start + flat_count) of the 1-D dataset
  // `dataset` (one per dtype and rank file) instead of a dataset of its own.
  bool packed = false;
  int64_t pack_start = 0;
};

// A rank file as a whole: its size and a checksum of every byte that is not tensor data (HDF5
// metadata), so that a flipped bit anywhere in the file is caught.
struct FileRecord {
  std::string name;
  uint64_t size = 0;
  uint64_t meta_xxh3 = 0;
};

struct TensorRecord {
  std::string path;
  at::ScalarType dtype = at::ScalarType::Float;
  std::vector<int64_t> global_shape;
  PlacementKind placement = PlacementKind::kReplicated;
  std::vector<ShardRecord> shards;
  int64_t numel() const;
  int64_t nbytes() const;
};

struct Manifest {
  int format_version = kFormatVersion;
  int64_t step = 0;
  int world_size = 1;
  double created_unix = 0;
  std::string library_version;
  std::string torch_version;
  int64_t piece_bytes = 1 << 20;
  std::vector<std::string> files;  // every rank file, relative to the checkpoint directory
  std::vector<FileRecord> file_records;
  std::map<std::string, ScalarValue> scalars;
  std::vector<TensorRecord> tensors;  // sorted by path
  // A step of the local (node-local) tier: the hosts that held each rank file when it was
  // saved, its writer's host first. Empty for the persistent tier.
  std::map<std::string, std::vector<std::string>> holders;

  // The tensor named `path` (binary search: `tensors` is sorted by path), or nullptr.
  const TensorRecord* FindTensor(const std::string& path) const;
  TensorRecord* FindTensor(const std::string& path);
  int64_t TotalBytes() const;
  std::string ToJson(int indent = -1) const;
  // Parses and, if `validate`, checks dtypes, shapes, checksum counts, coverage of every
  // tensor and file names that stay inside the checkpoint directory. Never throws.
  static Result<Manifest> FromJson(const std::string& json, bool validate = true);
};

}  // namespace distckpt
