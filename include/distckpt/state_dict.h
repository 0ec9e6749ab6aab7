// Helpers between LibTorch training objects and the checkpoint tree, in the layout Python users
// write by hand: {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}.
//
// The optimizer state follows Python's torch.optim layout: "state/<index>/<key>" with the
// parameter index counted in order across param groups, Adam/AdamW "step" as a 0-dim float32
// tensor, and "param_groups/<g>/<hyperparameter>" plus "param_groups/<g>/params". Supported:
// torch::optim::SGD (momentum buffers), Adam and AdamW (amsgrad included).
// Loading verifies everything before it touches the module or the optimizer. Not thread-safe.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <optional>
#include <string>

#include "distckpt/checkpoint.h"
#include "distckpt/tree.h"

namespace distckpt {

inline constexpr char kModelKey[] = "model_state_dict";
inline constexpr char kOptimizerKey[] = "optimizer_state_dict";

// Adds prefix/<name> for every parameter and buffer of `module` (replicated placement).
void AddModuleState(StateTree& tree, const std::string& prefix, const torch::nn::Module& module);
// Adds the optimizer's state and hyperparameters under `prefix` in Python's layout.
void AddOptimizerState(StateTree& tree, const std::string& prefix,
                       torch::optim::Optimizer& optimizer);

// {"epoch", "model_state_dict", "optimizer_state_dict" (if given), "loss"}.
StateTree MakeTrainingState(const torch::nn::Module& module, torch::optim::Optimizer* optimizer,
                            int64_t epoch, double loss);

struct TrainingMeta {
  std::string dir;  // the checkpoint loaded
  int64_t step = 0;
  int64_t epoch = 0;
  double loss = 0;
  StateTree scalars;  // every scalar stored in the checkpoint
};

// Collective. Loads checkpoint `dir` (empty: the newest under the checkpointer's root) into
// `module` and (if given) `optimizer`: every parameter, buffer, optimizer state tensor and
// hyperparameter. Names, shapes and dtypes must match the checkpoint exactly; on any mismatch or
// damaged byte, every rank throws Error and neither the module nor the optimizer has been
// modified. `options` as for Checkpointer::Load (fall_back to resume from the newest checkpoint
// that loads; in_place is implied).
TrainingMeta LoadTrainingState(Checkpointer& checkpointer, const std::string& dir,
                               torch::nn::Module& module, torch::optim::Optimizer* optimizer,
                               const LoadOptions& options = {});

// Per-rank state (an RNG state, a data-loader position): rank r's `mine` is stored as row r of
// a tensor of shape [world, mine.shape...] (every rank passes the same shape and dtype).
void AddPerRankTensor(StateTree& tree, const std::string& path, const at::Tensor& mine,
                      const Communicator& comm);

// Collective. Loads rank r's row of per-rank tensor `path` when the checkpoint was saved by more
// than r ranks. On a rank count change, ranks beyond the saving world get std::nullopt (and must
// start that state afresh), and rows of ranks that no longer exist are not loaded.
std::optional<at::Tensor> LoadPerRankTensor(Checkpointer& checkpointer, const std::string& dir,
                                            const std::string& path,
                                            const LoadOptions& options = {});

}  // namespace distckpt
