// Hugging Face safetensors, both ways.
//
// Export writes a checkpoint's tensors as one .safetensors file, or as the shards and
// model.safetensors.index.json that transformers writes, streaming in bounded chunks: memory
// stays near 64 MiB per process whatever the model size. Given a communicator, the export is
// collective and every rank writes its share of the bytes into the same files at once.
// Import commits a .safetensors file, or a model directory, as a checkpoint whose tensors lie
// under model_state_dict/, after validating every header. Not thread-safe (HDF5).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "distckpt/comm.h"
#include "distckpt/options.h"
#include "distckpt/status.h"
#include "distckpt/tree.h"

namespace distckpt {

struct SafetensorsExportOptions {
  Env* env = nullptr;  // nullptr: Env::Default()
  // Only tensors whose path starts with `prefix`, named without it: "model_state_dict/" gives
  // the names from_pretrained expects. "": every tensor, named by its full path.
  std::string prefix;
  // Tensor bytes per file before a directory output is split into shards (transformers' "5GB").
  int64_t max_shard_bytes = 5'000'000'000;
  ProgressFn progress;  // this rank's bytes written so far (the total is passed as -1)
};

struct SafetensorsExportStats {
  int tensors = 0;
  int64_t tensor_bytes = 0;        // of the whole output
  int64_t bytes_written_here = 0;  // by this rank
  std::vector<std::string> files;  // written, the index last
};

// `out` ending in ".safetensors": one file. Otherwise a directory (created if missing) that gets
// model.safetensors, or, above max_shard_bytes, model-00001-of-0000K.safetensors ... and
// model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}). Each file is
// written under a temporary name and renamed into place after every rank has written and
// synced it; the index comes last. The header's __metadata__ holds "format": "pt" and the
// checkpoint's step, epoch and loss as strings.
Result<SafetensorsExportStats> ExportSafetensors(const std::string& ckpt_dir,
                                                 const std::string& out,
                                                 const SafetensorsExportOptions& options = {});
// Collective. The same, with the bytes split among the ranks of `comm`, each writing its part.
Result<SafetensorsExportStats> ExportSafetensors(Communicator& comm, const std::string& ckpt_dir,
                                                 const std::string& out,
                                                 const SafetensorsExportOptions& options = {});

// Collective. The same files from a live tree: every rank writes what it holds of sharded
// tensors and its share of the replicated ones (CUDA tensors are copied to the host in 64 MiB
// rounds); `step` and the tree's epoch and loss go into the metadata.
Result<SafetensorsExportStats> ExportTreeSafetensors(Communicator& comm, const StateTree& tree,
                                                     int64_t step, const std::string& out,
                                                     const SafetensorsExportOptions& options = {});

// `path`: a .safetensors file, or a directory holding model.safetensors.index.json (and its
// shards) or model.safetensors. Every header is checked before anything is written: dtype,
// shape against the byte count, offsets inside the file, no overlap, no gap, a bounded header
// size; a violation names the file, the tensor and the offset. Tensors are read from memory
// mappings of the files and committed under `root` as model_state_dict/<name>; the metadata's
// epoch and loss become scalars, its step the default step. Returns the checkpoint directory.
Result<std::string> ImportSafetensors(const std::string& path, const std::string& root,
                                      const ImportOptions& options = {});

// True when `path` is a .safetensors file or a directory with a safetensors model.
bool IsSafetensors(const std::string& path, Env* env = nullptr);

}  // namespace distckpt
