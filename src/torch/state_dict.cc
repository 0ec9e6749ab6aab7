#include "distckpt/state_dict.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <set>

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

TrainingMeta LoadTrainingState(Checkpointer& checkpointer, const std::string& dir,
                               torch::nn::Module& module, torch::optim::Optimizer* optimizer) {
  const Manifest manifest = checkpointer.ReadManifest(dir);
  const std::string where = "checkpoint '" + dir + "'";
  auto fail = [&](const std::string& message) { throw Error(Mismatch(where + ": " + message)); };

  // Staging tensors: nothing of the caller's is touched until every byte has been verified.
  StateTree staged;
  std::map<std::string, at::Tensor> model_targets;
  for (const auto& item : module.named_parameters(true)) model_targets[item.key()] = item.value();
  for (const auto& item : module.named_buffers(true)) model_targets[item.key()] = item.value();
  const std::string model_prefix = std::string(kModelKey) + "/";
  for (const auto& [name, target] : model_targets) {
    const TensorRecord* rec = manifest.FindTensor(model_prefix + name);
    if (!rec)
      fail("tensor '" + model_prefix + name + "' is in the model but not in the checkpoint");
    if (rec->global_shape != target.sizes().vec() || rec->dtype != target.scalar_type()) {
      fail("tensor '" + rec->path + "' differs: checkpoint has " + DtypeName(rec->dtype) + " " +
           ShapeString(rec->global_shape) + ", model has " + DtypeName(target.scalar_type()) + " " +
           ShapeString(target.sizes().vec()));
    }
    staged.SetTensor(model_prefix + name,
                     at::empty(target.sizes(), at::TensorOptions().dtype(target.scalar_type())));
  }
  for (const TensorRecord& rec : manifest.tensors) {
    if (StartsWith(rec.path, model_prefix) &&
        !model_targets.count(rec.path.substr(model_prefix.size()))) {
      fail("tensor '" + rec.path + "' is in the checkpoint but not in the model");
    }
  }

  std::vector<at::Tensor> params;
  std::set<std::string> state_keys;
  const std::string opt_prefix = std::string(kOptimizerKey) + "/";
  if (optimizer) {
    params = ParamsInOrder(*optimizer);
    state_keys = StateKeys(KindOf(*optimizer));
    for (const TensorRecord& rec : manifest.tensors) {
      if (!StartsWith(rec.path, opt_prefix + "state/")) continue;
      // optimizer_state_dict/state/<index>/<key>
      const std::string rest = rec.path.substr(opt_prefix.size() + 6);
      const size_t slash = rest.find('/');
      if (slash == std::string::npos) fail("malformed optimizer state entry '" + rec.path + "'");
      const int64_t index = std::stoll(rest.substr(0, slash));
      const std::string key = rest.substr(slash + 1);
      if (index < 0 || index >= static_cast<int64_t>(params.size())) {
        fail("optimizer state for parameter " + std::to_string(index) + " but the optimizer has " +
             std::to_string(params.size()) + " parameters");
      }
      if (!state_keys.count(key)) {
        fail("optimizer state '" + rec.path + "' does not belong to this optimizer type");
      }
      if (key != "step" && rec.global_shape != params[index].sizes().vec()) {
        fail("optimizer state '" + rec.path + "' has a shape that differs from parameter " +
             std::to_string(index));
      }
      staged.SetTensor(rec.path, at::empty(rec.global_shape, at::TensorOptions().dtype(rec.dtype)));
    }
    const size_t groups = optimizer->param_groups().size();
    for (size_t gi = 0; gi < groups; ++gi) {
      const std::string key = opt_prefix + "param_groups/" + std::to_string(gi) + "/params";
      auto it = manifest.scalars.find(key);
      if (it == manifest.scalars.end()) fail("no param group " + std::to_string(gi));
      const auto* indices = std::get_if<std::vector<int64_t>>(&it->second);
      if (!indices || indices->size() != optimizer->param_groups()[gi].params().size()) {
        fail("param group " + std::to_string(gi) + " holds a different number of parameters");
      }
      const bool sgd = KindOf(*optimizer) == OptimizerKind::kSgd;
      const std::vector<std::string> hyper =
          sgd ? std::vector<std::string>{"lr", "momentum", "dampening", "weight_decay", "nesterov"}
              : std::vector<std::string>{"lr", "betas", "eps", "weight_decay", "amsgrad"};
      for (const std::string& h : hyper) {
        const std::string hk = opt_prefix + "param_groups/" + std::to_string(gi) + "/" + h;
        if (!manifest.scalars.count(hk)) fail("hyperparameter '" + hk + "' is missing");
      }
      if (!sgd) {
        // Adam and AdamW store the same tensors; Python's flag tells them apart.
        const std::string dk =
            opt_prefix + "param_groups/" + std::to_string(gi) + "/decoupled_weight_decay";
        auto flag = manifest.scalars.find(dk);
        const bool want = KindOf(*optimizer) == OptimizerKind::kAdamW;
        const bool* have =
            flag == manifest.scalars.end() ? nullptr : std::get_if<bool>(&flag->second);
        if (have && *have != want) {
          fail(std::string("the checkpoint holds ") + (*have ? "AdamW" : "Adam") +
               " state (param group " + std::to_string(gi) + ", decoupled_weight_decay=" +
               (*have ? "true" : "false") + ") but the optimizer is " + (want ? "AdamW" : "Adam"));
        }
      }
    }
  }

  // The staged tensors are ours to discard, so no second staging copy is needed.
  checkpointer.Load(dir, staged, LoadOptions{.in_place = true});

  // Verified on every rank: apply.
  {
    at::NoGradGuard no_grad;
    for (auto& [name, target] : model_targets) {
      target.copy_(staged.tensor(model_prefix + name).tensor);
    }
  }
  if (optimizer) {
    const OptimizerKind kind = KindOf(*optimizer);
    auto& state = optimizer->state();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string s = opt_prefix + "state/" + std::to_string(i);
      state.erase(params[i].unsafeGetTensorImpl());
      const at::Device device = params[i].device();
      auto on_device = [&](const std::string& key) {
        if (staged.HasTensor(s + "/" + key)) {
          auto& e = staged.mutable_tensors()[s + "/" + key];
          e.tensor = e.tensor.to(device);
        }
      };
      for (const auto& key : state_keys) {
        if (key != "step") on_device(key);
      }
      if (kind == OptimizerKind::kSgd) {
        if (!staged.HasTensor(s + "/momentum_buffer")) continue;
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(staged.tensor(s + "/momentum_buffer").tensor);
        state[params[i].unsafeGetTensorImpl()] = std::move(st);
      } else {
        if (!staged.HasTensor(s + "/exp_avg")) continue;
        state[params[i].unsafeGetTensorImpl()] =
            kind == OptimizerKind::kAdam ? MakeAdamState<torch::optim::AdamParamState>(staged, s)
                                         : MakeAdamState<torch::optim::AdamWParamState>(staged, s);
      }
    }
    auto& groups = optimizer->param_groups();
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const std::string g = opt_prefix + "param_groups/" + std::to_string(gi);
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
  TrainingMeta meta;
  meta.step = manifest.step;
  if (staged.HasScalar("epoch")) meta.epoch = staged.GetInt("epoch");
  if (staged.HasScalar("loss")) meta.loss = staged.GetDouble("loss");
  meta.scalars = staged;
  return meta;
}

void AddPerRankTensor(StateTree& tree, const std::string& path, const at::Tensor& mine,
                      const Communicator& comm) {
  std::vector<int64_t> shape = {comm.size()};
  for (int64_t d : mine.sizes()) shape.push_back(d);
  tree.SetShardedRows(path, mine.unsqueeze(0), shape, comm.rank());
}

std::optional<at::Tensor> LoadPerRankTensor(Checkpointer& checkpointer, const std::string& dir,
                                            const std::string& path) {
  const Manifest manifest = checkpointer.ReadManifest(dir);
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
  checkpointer.Load(dir, tree);
  if (!have_row) return std::nullopt;
  return row.squeeze(0);
}

}  // namespace distckpt
