// distckpt-train: deterministic data-parallel training over MPI, checkpointed with distckpt.
//
// The global batch is cut into a fixed number of micro-batches; each rank computes the
// gradients of a contiguous run of them, and every rank sums all micro-batch gradients in
// micro-batch order. The arithmetic is therefore the same for any rank count, so a run resumed
// on a different number of ranks continues bit for bit (as long as ranks <= micro-batches).
//
// With --zero 1 the optimizer state is partitioned as in ZeRO stage 1: the parameters are
// flattened in order, each rank owns one contiguous range of that flat space and keeps optimizer
// state only for it, updates its range after the reduction, and the ranges are all-gathered.
// The checkpoint layout is the same either way (Python's optimizer layout, with ZeRO ranges
// saved as flat shards), so a run saved with --zero resumes without it and the other way round.
//
// Data: a dataset of --dataset-size samples, sample i a function of (seed, i); the job keeps a
// global sample counter (saved as "samples_seen"), so that after a resume on another rank count
// every sample of the epoch is still seen exactly once (--log-samples records them per rank).
#include "examples/trainer.h"

#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "distckpt/async.h"
#include "distckpt/checkpoint.h"
#include "distckpt/state_dict.h"

namespace distckpt_train {

void AddOptions(CLI::App& app, Args* a) {
  // A repeated option takes its last value (scripts append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--ckpt-dir", a->ckpt_dir, "checkpoint root")->required();
  app.add_option("--steps", a->steps, "train until this step")
      ->check(distckpt::tools::NonNegativeInt());
  app.add_option("--save-every", a->save_every, "save every K steps (0: never)")
      ->check(distckpt::tools::NonNegativeInt());
  app.add_flag("--resume", a->resume, "resume from the newest good checkpoint");
  app.add_option("--optimizer", a->optimizer, "sgd, adam or adamw")
      ->check(CLI::IsMember({"sgd", "adam", "adamw"}));
  app.add_option("--model", a->model, "mlp or simple")->check(CLI::IsMember({"mlp", "simple"}));
  app.add_option("--zero", a->zero, "1: partition the optimizer state (ZeRO-1)")
      ->check(distckpt::tools::IntInRange(0, 1));
  app.add_option("--lr", a->lr, "learning rate")->check(distckpt::tools::PositiveReal());
  app.add_option("--seed", a->seed, "seed of the model and the data");
  app.add_option("--dataset-size", a->dataset_size, "samples per epoch")
      ->check(distckpt::tools::PositiveInt());
  app.add_option("--log-samples", a->log_samples, "write the samples each rank saw to PREFIX.N");
  app.add_option("--keep-last", a->keep_last, "keep the K newest checkpoints (0: all)")
      ->check(distckpt::tools::NonNegativeInt());
  app.add_flag("--async", a->async, "save in the background");
  app.add_option("--local-root", a->local_root,
                 "node-local directory, the same path on every host (e.g. under /dev/shm): keep "
                 "recent steps there, copied to other hosts");
  app.add_option("--local-every", a->local_every, "with --local-root: a local step every K steps")
      ->check(CLI::PositiveNumber);
  app.add_option("--persist-every", a->persist_every,
                 "with --local-root: a persistent step every M steps (default: --save-every)")
      ->check(distckpt::tools::NonNegativeInt());
  app.add_option("--replicas", a->replicas, "with --local-root: copies on other hosts")
      ->check(distckpt::tools::NonNegativeInt());
  app.add_option("--tag", a->tag, "save the last step (--steps) to the root under this tag");
  app.add_option("--collective-timeout", a->collective_timeout,
                 "seconds a rank may be late to any collective (gradients, checkpoints) before the "
                 "job ends (0: no limit)")
      ->check(CLI::NonNegativeNumber);
}

namespace {

struct Mlp : torch::nn::Module {
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(16, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 64));
    fc3 = register_module("fc3", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(torch::Tensor x) {
    return fc3->forward(torch::tanh(fc2->forward(torch::tanh(fc1->forward(x)))));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

// The model of PyTorch's checkpoint tutorial: one nn.Linear(10, 1) named "linear".
struct Simple : torch::nn::Module {
  Simple() { linear = register_module("linear", torch::nn::Linear(10, 1)); }
  torch::Tensor forward(torch::Tensor x) { return linear->forward(x); }
  torch::nn::Linear linear{nullptr};
};

// Sample `index` of the dataset: a function of (seed, index) only, identical on every rank.
torch::Tensor FlatParams(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> flat;
  for (const auto& p : params) flat.push_back(p.detach().reshape({-1}));
  return torch::cat(flat);
}

torch::Tensor SampleInput(const Args& a, int64_t in_features, int64_t index) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(a.seed * 1000003 + index));
  return at::randn({in_features}, gen);
}

torch::Tensor Target(const torch::Tensor& x) {
  return x.sum(1, true) * 0.5 + torch::sin(x.narrow(1, 0, 2)).sum(1, true);
}

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const Args& a,
                                                       std::vector<torch::Tensor> params) {
  if (a.optimizer == "sgd") {
    return std::make_unique<torch::optim::SGD>(params,
                                               torch::optim::SGDOptions(a.lr).momentum(0.9));
  }
  if (a.optimizer == "adamw") {
    return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(a.lr));
  }
  if (a.optimizer == "adam") {
    return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(a.lr));
  }
  throw std::invalid_argument("unknown optimizer '" + a.optimizer + "'");
}

std::vector<std::string> StateKeys(const Args& a) {
  if (a.optimizer == "sgd") return {"momentum_buffer"};
  return {"exp_avg", "exp_avg_sq"};
}

// ZeRO-1: this rank's range [lo, hi) of the flat parameter space and its optimizer.
struct ZeroShard {
  int64_t lo = 0, hi = 0;
  torch::Tensor flat;  // this rank's parameters, the optimizer's only tensor
  std::unique_ptr<torch::optim::Optimizer> optimizer;
};

torch::Tensor* StateTensor(const Args& a, torch::optim::OptimizerParamState& st,
                           const std::string& key) {
  if (a.optimizer == "sgd") {
    return &const_cast<torch::Tensor&>(
        static_cast<torch::optim::SGDParamState&>(st).momentum_buffer());
  }
  auto& adam = static_cast<torch::optim::AdamParamState&>(st);
  return key == "exp_avg" ? &const_cast<torch::Tensor&>(adam.exp_avg())
                          : &const_cast<torch::Tensor&>(adam.exp_avg_sq());
}

// The ZeRO state in the checkpoint's logical layout: per-parameter tensors in flat shards.
void AddZeroState(const Args& a, const std::vector<torch::Tensor>& params, ZeroShard& z,
                  distckpt::StateTree& tree) {
  const std::string prefix = std::string(distckpt::kOptimizerKey) + "/";
  auto& st = *z.optimizer->state().at(z.flat.unsafeGetTensorImpl());
  int64_t pos = 0;
  std::vector<int64_t> indices;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    const int64_t a0 = std::max(pos, z.lo), a1 = std::min(pos + n, z.hi);
    const std::string s = prefix + "state/" + std::to_string(i) + "/";
    for (const std::string& key : StateKeys(a)) {
      torch::Tensor local =
          a1 > a0 ? StateTensor(a, st, key)->narrow(0, a0 - z.lo, a1 - a0) : torch::empty({0});
      tree.SetShardedFlat(s + key, local, params[i].sizes().vec(), a1 > a0 ? a0 - pos : 0);
    }
    if (a.optimizer != "sgd") {
      const int64_t step = static_cast<torch::optim::AdamParamState&>(st).step();
      tree.SetTensor(s + "step", torch::full({}, static_cast<float>(step)));
    }
    indices.push_back(static_cast<int64_t>(i));
    pos += n;
  }
  // Hyperparameters as a plain optimizer over all parameters would store them.
  distckpt::StateTree groups;
  distckpt::AddOptimizerState(groups, distckpt::kOptimizerKey, *z.optimizer);
  for (const auto& [path, value] : groups.scalars()) tree.SetScalar(path, value);
  tree.SetScalar(prefix + "param_groups/0/params", indices);
}

template <typename State>
std::unique_ptr<torch::optim::OptimizerParamState> MakeAdamFamilyState(
    int64_t step, std::map<std::string, torch::Tensor>& flat) {
  auto st = std::make_unique<State>();
  st->step(step);
  st->exp_avg(flat["exp_avg"]);
  st->exp_avg_sq(flat["exp_avg_sq"]);
  return st;
}

void LoadZeroState(const Args& a, distckpt::Checkpointer& ckpt, const std::string& dir,
                   const distckpt::Manifest& manifest, torch::nn::Module& model,
                   const std::vector<torch::Tensor>& params, ZeroShard& z) {
  const std::string prefix = std::string(distckpt::kOptimizerKey) + "/";
  distckpt::StateTree staged;
  for (const auto& item : model.named_parameters()) {
    staged.SetTensor(std::string(distckpt::kModelKey) + "/" + item.key(),
                     torch::empty_like(item.value()));
  }
  std::map<std::string, torch::Tensor> flat;  // key -> this rank's range of the state
  for (const std::string& key : StateKeys(a)) flat[key] = torch::empty({z.hi - z.lo});
  int64_t pos = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    const int64_t a0 = std::max(pos, z.lo), a1 = std::min(pos + n, z.hi);
    const std::string s = prefix + "state/" + std::to_string(i) + "/";
    for (const std::string& key : StateKeys(a)) {
      torch::Tensor view = a1 > a0 ? flat[key].narrow(0, a0 - z.lo, a1 - a0) : torch::empty({0});
      staged.SetShardedFlat(s + key, view, params[i].sizes().vec(), a1 > a0 ? a0 - pos : 0);
    }
    pos += n;
  }
  if (a.optimizer != "sgd") staged.SetTensor(prefix + "state/0/step", torch::empty({}));
  // The staged tensors are views of our scratch buffers: load straight into them.
  ckpt.Load(dir, staged, distckpt::LoadOptions{.in_place = true, .manifest = &manifest});
  {
    torch::NoGradGuard no_grad;
    for (auto& item : model.named_parameters()) {
      item.value().copy_(staged.tensor(std::string(distckpt::kModelKey) + "/" + item.key()).tensor);
    }
    torch::Tensor all = FlatParams(params);
    z.flat.copy_(all.narrow(0, z.lo, z.hi - z.lo));
  }
  auto& state = z.optimizer->state();
  if (a.optimizer == "sgd") {
    auto st = std::make_unique<torch::optim::SGDParamState>();
    st->momentum_buffer(flat["momentum_buffer"]);
    state[z.flat.unsafeGetTensorImpl()] = std::move(st);
  } else {
    const int64_t step =
        static_cast<int64_t>(staged.tensor(prefix + "state/0/step").tensor.item<float>());
    std::unique_ptr<torch::optim::OptimizerParamState> ptr =
        a.optimizer == "adamw" ? MakeAdamFamilyState<torch::optim::AdamWParamState>(step, flat)
                               : MakeAdamFamilyState<torch::optim::AdamParamState>(step, flat);
    state[z.flat.unsafeGetTensorImpl()] = std::move(ptr);
  }
  const auto& scalars = staged.scalars();
  auto lr = scalars.find(prefix + "param_groups/0/lr");
  if (lr != scalars.end())
    z.optimizer->param_groups()[0].options().set_lr(std::get<double>(lr->second));
}

// One data-parallel training job: the model, its optimizer (whole, or this rank's ZeRO-1 part),
// the data position, and the checkpointers.
template <typename Model>
class Trainer {
 public:
  Trainer(const Args& a, distckpt::Communicator& comm)
      : a_(a), comm_(comm), rank_(comm.rank()), world_(comm.size()) {
    // The gradient exchange waits no longer than the checkpoint's collectives.
    comm_.set_collective_timeout(a.collective_timeout);
    torch::manual_seed(a.seed);
    model_ = std::make_shared<Model>();
    in_features_ = model_->parameters()[0].size(1);
    params_ = model_->parameters();
    for (auto& p : params_) numel_ += p.numel();
    if (a.zero) {
      zero_.lo = numel_ * rank_ / world_;
      zero_.hi = numel_ * (rank_ + 1) / world_;
      torch::NoGradGuard no_grad;
      zero_.flat = FlatParams(params_).narrow(0, zero_.lo, zero_.hi - zero_.lo).clone();
      zero_.optimizer = MakeOptimizer(a, {zero_.flat});
    } else {
      optimizer_ = MakeOptimizer(a, params_);
    }
    distckpt::CheckpointerOptions options;
    options.retention.keep_last = a.keep_last;
    options.collective_timeout_seconds = a.collective_timeout;
    options.env = &persistent_reads_;
    if (!a.local_root.empty()) {
      options.local.root = a.local_root;
      options.local.every = static_cast<int>(a.local_every);
      options.local.replicas = a.replicas;
      options.persist_every =
          static_cast<int>(a.persist_every > 0 ? a.persist_every : a.save_every);
    }
    checkpointer_ = std::make_unique<distckpt::Checkpointer>(a.ckpt_dir, comm, options);
    if (a.async) async_ = std::make_unique<distckpt::AsyncCheckpointer>(a.ckpt_dir, options);
  }

  int Run() {
    if (a_.resume) Resume();
    if (!a_.log_samples.empty()) {
      sample_log_.open(a_.log_samples + ".rank" + std::to_string(rank_), std::ios::app);
    }
    for (int64_t step = first_step_; step <= a_.steps; ++step) {
      double loss = 0;
      torch::Tensor gradient = AllReducedGradient(&loss);
      Update(gradient);
      samples_seen_ += a_.global_batch;
      if (rank_ == 0) std::printf("step %lld loss %.9g\n", static_cast<long long>(step), loss);
      std::fflush(stdout);
      const bool local = !a_.local_root.empty() && step % a_.local_every == 0;
      const bool tagged = !a_.tag.empty() && step == a_.steps;
      if (local || tagged || (a_.save_every > 0 && step % a_.save_every == 0)) {
        Save(step, loss, tagged ? a_.tag : "");
      }
    }
    if (async_) {
      std::string dir = async_->Wait();
      if (rank_ == 0 && !dir.empty()) std::printf("saved %s (last background save)\n", dir.c_str());
    }
    return 0;
  }

 private:
  // The newest checkpoint that loads; a damaged one is reported and skipped. The resume reads
  // several things from one checkpoint (the state, then each rank's RNG row), so it walks the
  // catalog itself rather than use LoadOptions::fall_back, which covers one load.
  void Resume() {
    persistent_reads_.opened = 0;
    // The newest step: with a local tier, from the surviving hosts' memory when that is newer.
    const std::optional<std::string> latest = checkpointer_->Latest();
    if (rank_ == 0 && !a_.local_root.empty()) {
      std::printf("resume: %s\n", checkpointer_->latest_reason().c_str());
    }
    std::vector<std::string> candidates = CommittedNewestFirst(a_.ckpt_dir);
    if (latest && (candidates.empty() || candidates.front() != *latest)) {
      candidates.insert(candidates.begin(), *latest);
    }
    for (const std::string& dir : candidates) {
      try {
        ResumeFrom(dir);
        if (!a_.local_root.empty()) {
          std::printf("rank %d: %d file(s) of the persistent root opened for reading\n", rank_,
                      persistent_reads_.opened);
        }
        return;
      } catch (const distckpt::Error& e) {
        const distckpt::Code code = e.status().code();
        if (code != distckpt::Code::kCorrupt && code != distckpt::Code::kNotFound) throw;
        if (rank_ == 0)
          std::printf("checkpoint %s is damaged (%s); falling back\n", dir.c_str(), e.what());
      }
    }
    if (rank_ == 0)
      std::printf("no checkpoint in %s: starting from scratch\n", a_.ckpt_dir.c_str());
  }

  static std::vector<std::string> CommittedNewestFirst(const std::string& root) {
    std::vector<std::string> dirs;
    for (const distckpt::CheckpointInfo& info : distckpt::ListCheckpoints(root)) {
      if (info.committed) dirs.insert(dirs.begin(), info.dir);
    }
    return dirs;
  }

  void ResumeFrom(const std::string& dir) {
    const distckpt::Manifest manifest =
        distckpt::ValueOrThrow(distckpt::ReadManifest(dir, &persistent_reads_));
    if (a_.zero) {
      LoadZeroState(a_, *checkpointer_, dir, manifest, *model_, params_, zero_);
    } else {
      distckpt::LoadTrainingState(*checkpointer_, dir, *model_, optimizer_.get(),
                                  distckpt::LoadOptions{.manifest = &manifest});
    }
    first_step_ = manifest.step + 1;
    auto seen = manifest.scalars.find("samples_seen");
    samples_seen_ = seen != manifest.scalars.end() ? std::get<int64_t>(seen->second)
                                                   : manifest.step * a_.global_batch;
    RestoreRng(dir, manifest);
    if (rank_ == 0) {
      auto loss = manifest.scalars.find("loss");
      std::printf("resumed from %s (step %lld, %lld samples seen, loss %.9g) on %d rank(s)%s\n",
                  dir.c_str(), static_cast<long long>(manifest.step),
                  static_cast<long long>(samples_seen_),
                  loss != manifest.scalars.end() ? std::get<double>(loss->second) : 0.0, world_,
                  a_.zero ? " with ZeRO-1" : "");
    }
  }

  // Each rank's RNG state comes back when the rank existed at save time; otherwise (or for a
  // checkpoint imported from Python, which has no per-rank state) it starts afresh from
  // (seed, step, rank).
  void RestoreRng(const std::string& dir, const distckpt::Manifest& manifest) {
    std::optional<at::Tensor> rng;
    if (manifest.FindTensor("rank_state/rng")) {
      rng = distckpt::LoadPerRankTensor(*checkpointer_, dir, "rank_state/rng",
                                        distckpt::LoadOptions{.manifest = &manifest});
    }
    if (rng) {
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      generator.set_state(*rng);
    } else {
      torch::manual_seed(a_.seed + 7919 * manifest.step + rank_);
    }
  }

  // This rank's micro-batches, each as [loss (double), gradient (float32 x numel)].
  std::string LocalGradients() {
    const int64_t micro = a_.global_batch / a_.micro_batches;
    std::string mine;
    for (int64_t m = a_.micro_batches * rank_ / world_; m < a_.micro_batches * (rank_ + 1) / world_;
         ++m) {
      std::vector<torch::Tensor> xs;
      for (int64_t k = 0; k < micro; ++k) {
        const int64_t index = (samples_seen_ + m * micro + k) % a_.dataset_size;
        xs.push_back(SampleInput(a_, in_features_, index));
        if (sample_log_.is_open()) sample_log_ << index << "\n";
      }
      torch::Tensor x = torch::stack(xs);
      for (auto& p : params_) {
        if (p.grad().defined()) p.mutable_grad().zero_();
      }
      auto loss = (model_->forward(x) - Target(x)).pow(2).sum() / a_.global_batch;
      loss.backward();
      double loss_value = loss.template item<double>();
      mine.append(reinterpret_cast<const char*>(&loss_value), sizeof(double));
      for (auto& p : params_) {
        auto g = p.grad().contiguous();
        mine.append(static_cast<const char*>(g.data_ptr()), g.nbytes());
      }
    }
    return mine;
  }

  // The global gradient, summed in micro-batch order whatever the rank that computed it, so
  // that a run's result does not depend on the rank count.
  torch::Tensor AllReducedGradient(double* total_loss) {
    std::vector<std::string> all;
    distckpt::ThrowIfError(comm_.AllGather(LocalGradients(), &all));
    torch::Tensor total = torch::zeros({numel_});
    *total_loss = 0;
    const size_t record = sizeof(double) + numel_ * sizeof(float);
    for (const std::string& part : all) {
      for (size_t off = 0; off < part.size(); off += record) {
        double lv;
        std::memcpy(&lv, part.data() + off, sizeof(double));
        *total_loss += lv;
        total += torch::from_blob(const_cast<char*>(part.data() + off + sizeof(double)), {numel_});
      }
    }
    return total;
  }

  void Update(const torch::Tensor& total) {
    if (!a_.zero) {
      int64_t pos = 0;
      for (auto& p : params_) {
        p.mutable_grad() = total.narrow(0, pos, p.numel()).view(p.sizes()).clone();
        pos += p.numel();
      }
      optimizer_->step();
      return;
    }
    // ZeRO-1: each rank steps its part, then the parts are gathered into every replica.
    zero_.flat.mutable_grad() = total.narrow(0, zero_.lo, zero_.hi - zero_.lo).clone();
    zero_.optimizer->step();
    std::string bytes(static_cast<const char*>(zero_.flat.data_ptr()), zero_.flat.nbytes());
    std::vector<std::string> ranges;
    distckpt::ThrowIfError(comm_.AllGather(bytes, &ranges));
    std::string joined;
    for (const auto& r : ranges) joined += r;
    torch::Tensor updated = torch::from_blob(joined.data(), {numel_});
    torch::NoGradGuard no_grad;
    int64_t pos = 0;
    for (auto& p : params_) {
      p.copy_(updated.narrow(0, pos, p.numel()).view(p.sizes()));
      pos += p.numel();
    }
  }

  void Save(int64_t step, double loss, const std::string& tag) {
    const int64_t epoch = samples_seen_ / a_.dataset_size;
    distckpt::StateTree tree =
        distckpt::MakeTrainingState(*model_, a_.zero ? nullptr : optimizer_.get(), epoch, loss);
    if (a_.zero) AddZeroState(a_, params_, zero_, tree);
    tree.SetScalar("step", step);
    tree.SetScalar("samples_seen", samples_seen_);
    distckpt::AddPerRankTensor(tree, "rank_state/rng",
                               at::detail::getDefaultCPUGenerator().get_state(), comm_);
    if (async_) {
      async_->SaveAsync(tree, step, tag);
      if (rank_ == 0) {
        std::printf("saving step %lld in the background (training blocked %.3f s)\n",
                    static_cast<long long>(step), async_->last_blocked_seconds());
      }
    } else {
      std::string dir = checkpointer_->Save(tree, step, tag);
      if (rank_ == 0 && !dir.empty()) std::printf("saved %s\n", dir.c_str());
    }
  }

  const Args& a_;
  distckpt::Communicator& comm_;
  const int rank_, world_;
  std::shared_ptr<Model> model_;
  int64_t in_features_ = 0;
  std::vector<torch::Tensor> params_;
  int64_t numel_ = 0;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  ZeroShard zero_;
  // Counts the files of the persistent root opened for reading (a resume from the local tier
  // opens none).
  struct CountingEnv : distckpt::EnvWrapper {
    CountingEnv(std::string root) : EnvWrapper(distckpt::Env::Default()), root(std::move(root)) {}
    distckpt::Result<std::unique_ptr<distckpt::ReadableFile>> OpenReadable(
        const std::string& p) override {
      if (p.compare(0, root.size(), root) == 0) ++opened;
      return EnvWrapper::OpenReadable(p);
    }
    std::string root;
    int opened = 0;
  };
  CountingEnv persistent_reads_{a_.ckpt_dir};
  std::unique_ptr<distckpt::Checkpointer> checkpointer_;
  std::unique_ptr<distckpt::AsyncCheckpointer> async_;
  int64_t first_step_ = 1;
  int64_t samples_seen_ = 0;
  std::ofstream sample_log_;
};

}  // namespace

int Train(const Args& a, distckpt::Communicator& comm) {
  return a.model == "simple" ? Trainer<Simple>(a, comm).Run() : Trainer<Mlp>(a, comm).Run();
}

}  // namespace distckpt_train
