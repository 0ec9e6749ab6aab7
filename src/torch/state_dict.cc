#include "distckpt/state_dict.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <map>
#include <set>

#include "checkpoint/access.h"

namespace distckpt {

namespace {

enum class OptimizerKind { kSgd, kAdam, kAdamW };

OptimizerKind KindOf(torch::optim::Optimizer& optimizer) {
  if (dynamic_cast<torch::optim::AdamW*>(&optimizer)) return OptimizerKind::kAdamW;
  if (dynamic_cast<torch::optim::Adam*>(&optimizer)) return OptimizerKind::kAdam;
  if (dynamic_cast<torch::optim::SGD*>(&optimizer)) return OptimizerKind::kSgd;
  throw Error(InvalidArgument("unsupported optimizer: distckpt maps SGD, Adam and AdamW"));
}

std::vector<at::Tensor> ParamsInOrder(torch::optim::Optimizer& optimizer) {
  std::vector<at::Tensor> params;
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) params.push_back(p);
  }
  return params;
}

at::Tensor StepTensor(int64_t step) {
  return at::full({}, static_cast<float>(step), at::TensorOptions().dtype(at::kFloat));
}

std::set<std::string> StateKeys(OptimizerKind kind) {
  if (kind == OptimizerKind::kSgd) return {"momentum_buffer"};
  return {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
}

template <typename Options>
void AddAdamGroup(StateTree& tree, const std::string& g, const Options& o, bool decoupled) {
  tree.SetScalar(g + "/lr", o.lr());
  tree.SetScalar(g + "/betas", std::vector<double>{std::get<0>(o.betas()), std::get<1>(o.betas())});
  tree.SetScalar(g + "/eps", o.eps());
  tree.SetScalar(g + "/weight_decay", o.weight_decay());
  tree.SetScalar(g + "/amsgrad", o.amsgrad());
  // Python's AdamW is Adam with decoupled weight decay; the flag tells them apart.
  tree.SetScalar(g + "/decoupled_weight_decay", decoupled);
}

template <typename Options>
void ApplyAdamGroup(const StateTree& tree, const std::string& g, Options& o) {
  o.lr(tree.GetDouble(g + "/lr"));
  const auto& betas = std::get<std::vector<double>>(tree.scalar(g + "/betas"));
  o.betas(std::make_tuple(betas.at(0), betas.at(1)));
  o.eps(tree.GetDouble(g + "/eps"));
  o.weight_decay(tree.GetDouble(g + "/weight_decay"));
  o.amsgrad(std::get<bool>(tree.scalar(g + "/amsgrad")));
}

template <typename State>
void AddAdamState(StateTree& tree, const std::string& s, const State& st) {
  tree.SetTensor(s + "/step", StepTensor(st.step()));
  tree.SetTensor(s + "/exp_avg", st.exp_avg());
  tree.SetTensor(s + "/exp_avg_sq", st.exp_avg_sq());
  if (st.max_exp_avg_sq().defined()) tree.SetTensor(s + "/max_exp_avg_sq", st.max_exp_avg_sq());
}

template <typename State>
std::unique_ptr<torch::optim::OptimizerParamState> MakeAdamState(const StateTree& staged,
                                                                 const std::string& s) {
  auto st = std::make_unique<State>();
  st->step(static_cast<int64_t>(staged.tensor(s + "/step").tensor.item<double>()));
  st->exp_avg(staged.tensor(s + "/exp_avg").tensor);
  st->exp_avg_sq(staged.tensor(s + "/exp_avg_sq").tensor);
  if (staged.HasTensor(s + "/max_exp_avg_sq")) {
    st->max_exp_avg_sq(staged.tensor(s + "/max_exp_avg_sq").tensor);
  }
  return st;
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

void AddModuleState(StateTree& tree, const std::string& prefix, const torch::nn::Module& module) {
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    tree.SetTensor(prefix + "/" + item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    tree.SetTensor(prefix + "/" + item.key(), item.value());
  }
}

void AddOptimizerState(StateTree& tree, const std::string& prefix,
                       torch::optim::Optimizer& optimizer) {
  const OptimizerKind kind = KindOf(optimizer);
  auto& state = optimizer.state();
  int64_t index = 0;
  auto& groups = optimizer.param_groups();
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const std::string g = prefix + "/param_groups/" + std::to_string(gi);
    std::vector<int64_t> indices;
    for (auto& p : groups[gi].params()) {
      const std::string s = prefix + "/state/" + std::to_string(index);
      indices.push_back(index++);
      auto it = state.find(p.unsafeGetTensorImpl());
      if (it == state.end()) continue;
      if (kind == OptimizerKind::kSgd) {
        auto& st = static_cast<torch::optim::SGDParamState&>(*it->second);
        if (st.momentum_buffer().defined())
          tree.SetTensor(s + "/momentum_buffer", st.momentum_buffer());
      } else if (kind == OptimizerKind::kAdam) {
        AddAdamState(tree, s, static_cast<torch::optim::AdamParamState&>(*it->second));
      } else {
        AddAdamState(tree, s, static_cast<torch::optim::AdamWParamState&>(*it->second));
      }
    }
    tree.SetScalar(g + "/params", indices);
    auto& options = groups[gi].options();
    if (kind == OptimizerKind::kSgd) {
      auto& o = static_cast<torch::optim::SGDOptions&>(options);
      tree.SetScalar(g + "/lr", o.lr());
      tree.SetScalar(g + "/momentum", o.momentum());
      tree.SetScalar(g + "/dampening", o.dampening());
      tree.SetScalar(g + "/weight_decay", o.weight_decay());
      tree.SetScalar(g + "/nesterov", o.nesterov());
    } else if (kind == OptimizerKind::kAdam) {
      AddAdamGroup(tree, g, static_cast<torch::optim::AdamOptions&>(options), false);
    } else {
      AddAdamGroup(tree, g, static_cast<torch::optim::AdamWOptions&>(options), true);
    }
  }
}

StateTree MakeTrainingState(const torch::nn::Module& module, torch::optim::Optimizer* optimizer,
                            int64_t epoch, double loss) {
  StateTree tree;
  tree.SetScalar("epoch", epoch);
  tree.SetScalar("loss", loss);
  AddModuleState(tree, kModelKey, module);
  if (optimizer) AddOptimizerState(tree, kOptimizerKey, *optimizer);
  return tree;
}

namespace {

[[noreturn]] void Fail(const std::string& dir, const std::string& message) {
  throw Error(Mismatch("checkpoint '" + dir + "': " + message));
}

// Every parameter and buffer of the module, by name.
std::map<std::string, at::Tensor> ModelTargets(const torch::nn::Module& module) {
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module.named_parameters(true)) targets[item.key()] = item.value();
  for (const auto& item : module.named_buffers(true)) targets[item.key()] = item.value();
  return targets;
}

// Staging tensors for the model: names, shapes and dtypes must match the checkpoint both ways.
void StageModel(const std::string& dir, const Manifest& manifest,
                const std::map<std::string, at::Tensor>& targets, StateTree* staged) {
  const std::string prefix = std::string(kModelKey) + "/";
  for (const auto& [name, target] : targets) {
    const TensorRecord* rec = manifest.FindTensor(prefix + name);
    if (!rec) Fail(dir, "tensor '" + prefix + name + "' is in the model but not in the checkpoint");
    if (rec->global_shape != target.sizes().vec() || rec->dtype != target.scalar_type()) {
      Fail(dir, "tensor '" + rec->path + "' differs: checkpoint has " + DtypeName(rec->dtype) +
                    " " + ShapeString(rec->global_shape) + ", model has " +
                    DtypeName(target.scalar_type()) + " " + ShapeString(target.sizes().vec()));
    }
    staged->SetTensor(prefix + name,
                      at::empty(target.sizes(), at::TensorOptions().dtype(target.scalar_type())));
  }
  for (const TensorRecord& rec : manifest.tensors) {
    if (StartsWith(rec.path, prefix) && !targets.count(rec.path.substr(prefix.size()))) {
      Fail(dir, "tensor '" + rec.path + "' is in the checkpoint but not in the model");
    }
  }
}

// Staging tensors for the optimizer state: each belongs to a parameter and to this optimizer.
void StageOptimizerState(const std::string& dir, const Manifest& manifest,
                         const std::vector<at::Tensor>& params,
                         const std::set<std::string>& state_keys, StateTree* staged) {
  const std::string state_prefix = std::string(kOptimizerKey) + "/state/";
  for (const TensorRecord& rec : manifest.tensors) {
    if (!StartsWith(rec.path, state_prefix)) continue;
    const std::string rest = rec.path.substr(state_prefix.size());  // <index>/<key>
    const size_t slash = rest.find('/');
    if (slash == std::string::npos || slash == 0 || rest.find_first_not_of("0123456789") < slash) {
      Fail(dir, "malformed optimizer state entry '" + rec.path + "'");
    }
    const int64_t index = std::stoll(rest.substr(0, slash));
    const std::string key = rest.substr(slash + 1);
    if (index >= static_cast<int64_t>(params.size())) {
      Fail(dir, "optimizer state for parameter " + std::to_string(index) +
                    " but the optimizer has " + std::to_string(params.size()) + " parameters");
    }
    if (!state_keys.count(key)) {
      Fail(dir, "optimizer state '" + rec.path + "' does not belong to this optimizer type");
    }
    if (key != "step" && rec.global_shape != params[index].sizes().vec()) {
      Fail(dir, "optimizer state '" + rec.path + "' has a shape that differs from parameter " +
                    std::to_string(index));
    }
    staged->SetTensor(rec.path, at::empty(rec.global_shape, at::TensorOptions().dtype(rec.dtype)));
  }
}

// Every param group is there with this optimizer's hyperparameters, and Adam and AdamW (which
// store the same tensors) are told apart by decoupled_weight_decay.
void CheckParamGroups(const std::string& dir, const Manifest& manifest,
                      torch::optim::Optimizer& optimizer) {
  const OptimizerKind kind = KindOf(optimizer);
  const std::vector<std::string> hyper =
      kind == OptimizerKind::kSgd
          ? std::vector<std::string>{"lr", "momentum", "dampening", "weight_decay", "nesterov"}
          : std::vector<std::string>{"lr", "betas", "eps", "weight_decay", "amsgrad"};
  for (size_t gi = 0; gi < optimizer.param_groups().size(); ++gi) {
    const std::string g = std::string(kOptimizerKey) + "/param_groups/" + std::to_string(gi);
    auto it = manifest.scalars.find(g + "/params");
    if (it == manifest.scalars.end()) Fail(dir, "no param group " + std::to_string(gi));
    const auto* indices = std::get_if<std::vector<int64_t>>(&it->second);
    if (!indices || indices->size() != optimizer.param_groups()[gi].params().size()) {
      Fail(dir, "param group " + std::to_string(gi) + " holds a different number of parameters");
    }
    for (const std::string& h : hyper) {
      if (!manifest.scalars.count(g + "/" + h)) {
        Fail(dir, "hyperparameter '" + g + "/" + h + "' is missing");
      }
    }
    if (kind == OptimizerKind::kSgd) continue;
    auto flag = manifest.scalars.find(g + "/decoupled_weight_decay");
    const bool* have = flag == manifest.scalars.end() ? nullptr : std::get_if<bool>(&flag->second);
    const bool want = kind == OptimizerKind::kAdamW;
    if (have && *have != want) {
      Fail(dir, std::string("the checkpoint holds ") + (*have ? "AdamW" : "Adam") +
                    " state (param group " + std::to_string(gi) +
                    ", decoupled_weight_decay=" + (*have ? "true" : "false") +
                    ") but the optimizer is " + (want ? "AdamW" : "Adam"));
    }
  }
}

// Moves the verified state into the optimizer (on each parameter's device).
void ApplyOptimizerState(StateTree& staged, const std::vector<at::Tensor>& params,
                         const std::set<std::string>& state_keys,
                         torch::optim::Optimizer& optimizer) {
  const OptimizerKind kind = KindOf(optimizer);
  const std::string opt_prefix = std::string(kOptimizerKey) + "/";
  auto& state = optimizer.state();
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string s = opt_prefix + "state/" + std::to_string(i);
    state.erase(params[i].unsafeGetTensorImpl());
    for (const auto& key : state_keys) {
      if (key == "step" || !staged.HasTensor(s + "/" + key)) continue;
      auto& e = staged.mutable_tensors()[s + "/" + key];
      e.tensor = e.tensor.to(params[i].device());
    }
    if (kind == OptimizerKind::kSgd) {
      if (!staged.HasTensor(s + "/momentum_buffer")) continue;
      auto st = std::make_unique<torch::optim::SGDParamState>();
      st->momentum_buffer(staged.tensor(s + "/momentum_buffer").tensor);
      state[params[i].unsafeGetTensorImpl()] = std::move(st);
    } else if (staged.HasTensor(s + "/exp_avg")) {
      state[params[i].unsafeGetTensorImpl()] =
          kind == OptimizerKind::kAdam ? MakeAdamState<torch::optim::AdamParamState>(staged, s)
                                       : MakeAdamState<torch::optim::AdamWParamState>(staged, s);
    }
  }
}

void ApplyParamGroups(const StateTree& staged, torch::optim::Optimizer& optimizer) {
  const OptimizerKind kind = KindOf(optimizer);
  auto& groups = optimizer.param_groups();
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const std::string g = std::string(kOptimizerKey) + "/param_groups/" + std::to_string(gi);
    auto& options = groups[gi].options();
    if (kind == OptimizerKind::kSgd) {
      auto& o = static_cast<torch::optim::SGDOptions&>(options);
      o.lr(staged.GetDouble(g + "/lr"));
      o.momentum(staged.GetDouble(g + "/momentum"));
      o.dampening(staged.GetDouble(g + "/dampening"));
      o.weight_decay(staged.GetDouble(g + "/weight_decay"));
      o.nesterov(std::get<bool>(staged.scalar(g + "/nesterov")));
    } else if (kind == OptimizerKind::kAdam) {
      ApplyAdamGroup(staged, g, static_cast<torch::optim::AdamOptions&>(options));
    } else {
      ApplyAdamGroup(staged, g, static_cast<torch::optim::AdamWOptions&>(options));
    }
  }
}

}  // namespace

namespace {

TrainingMeta LoadTrainingStateFrom(Checkpointer& checkpointer, const std::string& dir,
                                   const Manifest& manifest, torch::nn::Module& module,
                                   torch::optim::Optimizer* optimizer, const LoadOptions& options) {
  // Staging tensors: nothing of the caller's is touched until every byte has been verified.
  StateTree staged;
  std::map<std::string, at::Tensor> model_targets = ModelTargets(module);
  StageModel(dir, manifest, model_targets, &staged);
  std::vector<at::Tensor> params;
  std::set<std::string> state_keys;
  if (optimizer) {
    params = ParamsInOrder(*optimizer);
    state_keys = StateKeys(KindOf(*optimizer));
    StageOptimizerState(dir, manifest, params, state_keys, &staged);
    CheckParamGroups(dir, manifest, *optimizer);
  }
  // The staged tensors are ours to discard, so no second staging copy is needed.
  LoadOptions into_staged = options;
  into_staged.in_place = true;
  into_staged.fall_back = false;
  into_staged.manifest = &manifest;
  checkpointer.Load(dir, staged, into_staged);

  // Verified on every rank: apply.
  {
    at::NoGradGuard no_grad;
    const std::string model_prefix = std::string(kModelKey) + "/";
    for (auto& [name, target] : model_targets) {
      target.copy_(staged.tensor(model_prefix + name).tensor);
    }
  }
  if (optimizer) {
    ApplyOptimizerState(staged, params, state_keys, *optimizer);
    ApplyParamGroups(staged, *optimizer);
  }
  TrainingMeta meta;
  meta.dir = dir;
  meta.step = manifest.step;
  if (staged.HasScalar("epoch")) meta.epoch = staged.GetInt("epoch");
  if (staged.HasScalar("loss")) meta.loss = staged.GetDouble("loss");
  meta.scalars = staged;
  return meta;
}

}  // namespace

TrainingMeta LoadTrainingState(Checkpointer& checkpointer, const std::string& dir,
                               torch::nn::Module& module, torch::optim::Optimizer* optimizer,
                               const LoadOptions& options) {
  TrainingMeta meta;
  CheckpointerAccess::LoadFallingBack(checkpointer, dir, options, [&](const std::string& chosen) {
    const Manifest manifest = (chosen == dir && options.manifest)
                                  ? *options.manifest
                                  : CheckpointerAccess::SharedManifest(checkpointer, chosen);
    meta = LoadTrainingStateFrom(checkpointer, chosen, manifest, module, optimizer, options);
  });
  return meta;
}

void AddPerRankTensor(StateTree& tree, const std::string& path, const at::Tensor& mine,
                      const Communicator& comm) {
  std::vector<int64_t> shape = {comm.size()};
  for (int64_t d : mine.sizes()) shape.push_back(d);
  tree.SetShardedRows(path, mine.unsqueeze(0), shape, comm.rank());
}

std::optional<at::Tensor> LoadPerRankTensor(Checkpointer& checkpointer, const std::string& dir,
                                            const std::string& path, const LoadOptions& options) {
  const Manifest manifest =
      options.manifest ? *options.manifest : CheckpointerAccess::SharedManifest(checkpointer, dir);
  const TensorRecord* rec = manifest.FindTensor(path);
  if (!rec || rec->global_shape.empty()) {
    throw Error(NotFound("checkpoint '" + dir + "' has no per-rank tensor '" + path + "'"));
  }
  const int rank = checkpointer.comm().rank();
  const bool have_row = rank < rec->global_shape[0];
  std::vector<int64_t> row_shape(rec->global_shape.begin() + 1, rec->global_shape.end());
  row_shape.insert(row_shape.begin(), have_row ? 1 : 0);
  // Every rank takes part in the collective load; ranks without a row ask for zero rows.
  StateTree tree;
  at::Tensor row = at::empty(row_shape, at::TensorOptions().dtype(rec->dtype));
  tree.SetShardedRows(path, row, rec->global_shape, have_row ? rank : 0);
  LoadOptions exact = options;
  exact.fall_back = false;
  exact.manifest = &manifest;
  checkpointer.Load(dir, tree, exact);
  if (!have_row) return std::nullopt;
  return row.squeeze(0);
}

}  // namespace distckpt
