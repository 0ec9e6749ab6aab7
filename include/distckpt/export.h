// Export to, and import from, the single-file .pt format of Python's torch.save.
//
// Export streams: the pickle (structure only) is written first, then each tensor is read from
// the checkpoint, verified against its checksums and written as its own 64-byte-aligned zip
// record, one at a time, so peak memory is about one tensor whatever the model's size. The file
// loads with plain torch.load(path) (weights_only=True, the default since torch 2.6) and with
// mmap=True. The tree becomes Python dicts: optimizer "state" keyed by integer parameter index,
// "param_groups" a list, "betas" a tuple, plus Python's default hyperparameters.
//
// Import reads a torch.save file (the {"epoch", "model_state_dict", "optimizer_state_dict",
// "loss"} layout or a bare state_dict) without running any code from it: only containers,
// numbers, strings, None and tensors are accepted, and any other global is refused by name.
// Import of a PyTorch DCP checkpoint directory (torch.distributed.checkpoint with its
// FileSystemWriter: a .metadata file and .distcp files) reads the metadata as plain records,
// assembles each tensor from the chunks the saving ranks wrote, and rebuilds the nested dict
// from the keys DCP recorded; compressed (transformed) items are refused by name.
// Functions here are not collective unless they say so; not thread-safe (HDF5).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "distckpt/comm.h"
#include "distckpt/options.h"
#include "distckpt/status.h"
#include "distckpt/tree.h"

namespace distckpt {

class DeviceGatherer;

class Env;

struct ExportOptions {
  Env* env = nullptr;       // every file operation goes through it; nullptr: Env::Default()
  bool model_only = false;  // write the bare model state_dict, for deployment
  ProgressFn progress;
  // Live export only: gathers CUDA shards over NCCL (see nccl.h); CPU shards, or all shards
  // when this is null, are gathered over the Communicator (MPI).
  DeviceGatherer* device_gatherer = nullptr;
};

struct ExportStats {
  int tensors = 0;
  int64_t tensor_bytes = 0;
  int64_t largest_tensor_bytes = 0;
};

// Writes checkpoint directory `ckpt_dir` as one .pt file (through a temporary name, then
// rename). Fails naming the tensor, file and offset of any damaged byte; `out_path` is then
// left as it was.
Result<ExportStats> ExportCheckpoint(const std::string& ckpt_dir, const std::string& out_path,
                                     const ExportOptions& options = {});

// Collective. Writes a live tree to one .pt file on rank 0: tensors are gathered to rank 0 one
// at a time through the communicator. Every rank gets the same outcome.
Status ExportTree(Communicator& comm, const StateTree& tree, const std::string& out_path,
                  const ExportOptions& options = {});

// Reads a torch.save file into a tree (replicated tensors, CPU).
Result<StateTree> ReadPt(const std::string& pt_path, Env* env = nullptr);
// Reads `pt_path` and commits it as a checkpoint under `root`; returns its directory.
Result<std::string> ImportPt(const std::string& pt_path, const std::string& root,
                             const ImportOptions& options = {});

// Whether `path` is a PyTorch DCP checkpoint directory (it holds a .metadata file).
bool IsDcpCheckpoint(const std::string& path, Env* env = nullptr);
// Reads a PyTorch DCP checkpoint directory into a tree (replicated tensors, CPU).
Result<StateTree> ReadDcp(const std::string& dcp_dir, Env* env = nullptr);
// Reads `dcp_dir` and commits it as a checkpoint under `root`; returns its directory.
Result<std::string> ImportDcp(const std::string& dcp_dir, const std::string& root,
                              const ImportOptions& options = {});

}  // namespace distckpt
