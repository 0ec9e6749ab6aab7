// Options and statistics of saves, loads and imports: plain structs, no behaviour.
//
// Kept apart from checkpoint.h so that the layers below the coordinator (the shard reader, the
// async snapshot) can name them without pulling in the coordinator. Thread-compatible.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace distckpt {

class Env;
class CopyEngine;
struct Manifest;

// Long operations report bytes done and bytes in total through this, after each tensor.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct RetentionPolicy {
  int keep_last = 0;  // keep the K newest committed checkpoints (0: no limit from this rule)
  int keep_best = 0;  // keep the K best by `metric` (0: no limit from this rule)
  std::string metric = "loss";  // a numeric scalar of the tree
  bool lower_is_better = true;
  // A tagged checkpoint always survives; false: tags protect nothing (a removed checkpoint's
  // tags are removed with it).
  bool keep_tagged = true;
  // Checkpoints kept by either rule survive (a union); the newest committed one always does.
  bool active() const { return keep_last > 0 || keep_best > 0; }
};

// How tensors the CPU cannot address (CUDA memory) travel to and from storage: through `buffers`
// host buffers of budget_bytes / buffers each (page-locked, kept for the duration of the call).
// A load reads and verifies a piece into a free buffer and queues its copy to the device while
// it reads the next; a save copies ahead into every free buffer while it hashes and writes the
// last. Host memory for device tensors stays within budget_bytes whatever their size (a buffer
// holds at least one checksum piece, CheckpointerOptions::piece_bytes).
struct DeviceStaging {
  CopyEngine* engine = nullptr;  // nullptr: the built-in CUDA engine (MakeDeviceCopyEngine)
  int64_t budget_bytes = 256 << 20;
  int buffers = 4;
};

// The local tier: recent checkpoints in node-local storage (by default memory: /dev/shm), each
// rank's file copied to `replicas` other hosts, so that a job that loses a host resumes from
// the survivors' memory, on any number of ranks, without reading the persistent root.
struct LocalTier {
  std::string root;  // the same path on every host, private to it ("": no local tier)
  int every = 1;     // Save(tree, step) writes the local tier when step % every == 0
  int replicas = 1;  // copies of each rank file on other hosts (never on its writer's host)
  int keep = 2;      // local steps kept on each host (the newest always)
};

struct CheckpointerOptions {
  Env* env = nullptr;                 // nullptr: Env::Default()
  int64_t piece_bytes = 1 << 20;      // checksum granularity
  int64_t min_split_bytes = 1 << 20;  // replicated tensors smaller than this stay whole
  // Shards smaller than this are packed, one dataset per dtype and rank file, instead of one
  // HDF5 dataset each (about 1 KiB of HDF5 metadata per dataset). 0: pack nothing.
  int64_t pack_below_bytes = 64 << 10;
  RetentionPolicy retention;  // applied by rank 0 after each successful commit
  // A save whose writes have not finished after this many seconds gives up with an error on
  // every rank (0: no limit). Checked between pieces of at most 64 MiB.
  double save_timeout_seconds = 0;
  // Every collective step of a save, load or export waits at most this long for every rank
  // (Communicator::set_collective_timeout, set on the Checkpointer's communicator). A rank that
  // does not arrive (stopped, its storage stalled, its host gone) is named with its host by
  // every other rank, and the job is ended. 0: wait forever.
  double collective_timeout_seconds = 600;
  // Saves of device tensors (and the snapshots of AsyncCheckpointer) copy through this.
  DeviceStaging device_staging;
  LocalTier local;
  // Save(tree, step) writes the persistent root when step % persist_every == 0 (with a local
  // tier, e.g. local every step and persistent every 100).
  int persist_every = 1;
};

// Imports (.pt, safetensors): where the checkpoint goes and how it is reported.
struct ImportOptions {
  Env* env = nullptr;  // nullptr: Env::Default()
  int64_t step = -1;   // -1: the file's "step" (or "epoch") entry, else 0
  ProgressFn progress;
};

enum class ReadOnce { kAuto, kOn, kOff };

struct LoadOptions {
  // By default a load is all or nothing: tensors in CPU memory (contiguous) are verified first
  // (read and checked against their checksums, through a bounded buffer) and, once every rank
  // has verified everything, read again straight into place (from the page cache, checked
  // again); other destinations are staged in fresh memory and copied. Only if the stored bytes
  // changed, or storage failed, between the two reads can a failed load leave tensors partly
  // overwritten; the error says so.
  //
  // in_place: read straight into the tree's tensors (CPU, contiguous ones) in one pass. The
  // fastest, but a damaged checkpoint may leave those tensors partly overwritten: use it only
  // for scratch tensors the caller would discard on failure.
  bool in_place = false;
  // Tensors that every rank loads whole are read from storage once in total: each rank reads
  // and verifies a distinct 1/M of the bytes, and the ranks exchange them over the
  // communicator. Off: every rank reads everything it needs itself. Auto: on when the ranks
  // span several machines; on one machine the page cache already shares the reads, and per-rank
  // reads were faster in every measurement (docs/benchmarks.md).
  ReadOnce read_once = ReadOnce::kAuto;
  // Loads into device tensors: verified first (as above, without staging memory), then read
  // again piece by piece through these buffers and copied to the device. Tensors read once
  // (read_once) are exchanged in host memory and staged whole.
  DeviceStaging device_staging;
  // A load whose reads and device copies have not finished after this many seconds gives up
  // with an error on every rank (0: no limit). Checked between pieces and while copies run.
  double timeout_seconds = 0;
  // When the checkpoint is damaged (corrupt or missing files), say so through `on_fall_back`
  // and load the next older committed checkpoint under the same root instead, until one loads;
  // the load returns the directory it used. Other errors (a model that does not match the
  // checkpoint) are thrown as they are.
  bool fall_back = false;
  std::function<void(const std::string& why)> on_fall_back;  // nullptr: rank 0 prints to stderr
  // The manifest of the checkpoint being loaded, if the caller already read it (ReadManifest),
  // so that it is not read again. Ignored once a load falls back to another checkpoint.
  const Manifest* manifest = nullptr;
};

// Where this rank's time went in the last save, in seconds. Coordination is everything but
// `write_seconds`: describing and planning, HDF5 structure, checksums, votes, the exchange of
// shard tables and the manifest.
struct SaveStats {
  double total_seconds = 0;
  double plan_seconds = 0;    // describe the tree, exchange, plan (or check the cached plan)
  double layout_seconds = 0;  // create the rank file's HDF5 structure
  double write_seconds = 0;   // write the tensor bytes and fsync the rank file
  double commit_seconds = 0;  // votes, exchange of shard tables, manifest (rank 0) and renames
  double local_seconds = 0;   // the local tier's part: write, copies to other hosts, commits
  // Tensor bytes the last local step takes on this rank's host (its ranks' files and the
  // copies it keeps): the memory a tmpfs local root gives up, per step kept.
  int64_t local_host_bytes = 0;
  bool plan_reused = false;
  int64_t bytes_written = 0;         // tensor bytes this rank wrote
  int64_t device_staging_bytes = 0;  // host memory of the staging buffers for device tensors
  // Older checkpoints the save's retention meant to remove but could not, as "DIR: the error"
  // (on the rank that ran it: rank 0, and each host's leader for the local tier). They stay in
  // place; the next save, or `distckpt gc`, tries again.
  std::vector<std::string> retention_failed;
  double coordination_seconds() const { return total_seconds - write_seconds; }
};

struct LoadStats {
  int64_t bytes_read = 0;      // bytes this rank read from storage, checksum padding included
  int64_t bytes_reread = 0;    // of those, read a second time into place after verification
  int64_t bytes_verified = 0;  // bytes hashed and compared
  int files_opened = 0;
  int64_t device_staging_bytes = 0;  // host memory of the staging buffers for device tensors
};

}  // namespace distckpt
