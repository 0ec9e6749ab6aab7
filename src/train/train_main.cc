// distckpt-train: deterministic data-parallel training over MPI, checkpointed with distckpt.
//
// The global batch is cut into a fixed number of micro-batches; each rank computes the
// gradients of a contiguous run of them, and every rank sums all micro-batch gradients in
// micro-batch order. The arithmetic is therefore the same for any rank count, so a run resumed
// on a different number of ranks continues bit for bit (as long as ranks <= micro-batches).
#include <mpi.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "distckpt/checkpoint.h"
#include "distckpt/comm.h"
#include "distckpt/state_dict.h"

namespace {

struct Args {
  std::string ckpt_dir;
  int64_t steps = 20;
  int64_t save_every = 5;
  bool resume = false;
  std::string optimizer = "adam";
  std::string model = "mlp";
  double lr = 1e-2;
  int64_t seed = 1234;
  int64_t global_batch = 96;
  int64_t micro_batches = 12;
  int64_t steps_per_epoch = 10;
};

void Usage() {
  std::fprintf(stderr,
               "usage: distckpt-train --ckpt-dir DIR [--steps S] [--save-every K] [--resume]\n"
               "       [--optimizer sgd|adam|adamw] [--model mlp|simple] [--lr LR] [--seed N]\n");
}

bool Parse(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (k == "--ckpt-dir")
      a->ckpt_dir = next();
    else if (k == "--steps")
      a->steps = std::stoll(next());
    else if (k == "--save-every")
      a->save_every = std::stoll(next());
    else if (k == "--resume")
      a->resume = true;
    else if (k == "--optimizer")
      a->optimizer = next();
    else if (k == "--model")
      a->model = next();
    else if (k == "--lr")
      a->lr = std::stod(next());
    else if (k == "--seed")
      a->seed = std::stoll(next());
    else
      return false;
  }
  return !a->ckpt_dir.empty() && a->global_batch % a->micro_batches == 0;
}

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

// Synthetic regression data: a function of (seed, step) only, identical on every rank.
std::pair<torch::Tensor, torch::Tensor> Batch(const Args& a, int64_t in_features, int64_t step) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(a.seed * 1000003 + step));
  torch::Tensor x = at::randn({a.global_batch, in_features}, gen);
  torch::Tensor y = x.sum(1, true) * 0.5 + torch::sin(x.narrow(1, 0, 2)).sum(1, true);
  return {x, y};
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

template <typename Model>
int Train(const Args& a, distckpt::Communicator& comm) {
  const int rank = comm.rank();
  const int world = comm.size();
  torch::manual_seed(a.seed);
  auto model = std::make_shared<Model>();
  const int64_t in_features = model->parameters()[0].size(1);
  std::vector<torch::Tensor> params = model->parameters();
  auto optimizer = MakeOptimizer(a, params);
  distckpt::Checkpointer checkpointer(a.ckpt_dir, comm);

  int64_t first_step = 1;
  if (a.resume) {
    if (auto dir = checkpointer.Latest()) {
      auto meta = distckpt::LoadTrainingState(checkpointer, *dir, *model, optimizer.get());
      first_step = meta.step + 1;
      if (rank == 0) {
        std::printf("resumed from %s (step %lld, epoch %lld, loss %.9g) on %d rank(s)\n",
                    dir->c_str(), static_cast<long long>(meta.step),
                    static_cast<long long>(meta.epoch), meta.loss, world);
      }
    } else if (rank == 0) {
      std::printf("no checkpoint in %s: starting from scratch\n", a.ckpt_dir.c_str());
    }
  }

  int64_t numel = 0;
  for (auto& p : params) numel += p.numel();
  const int64_t micro = a.global_batch / a.micro_batches;
  const int64_t my_first = a.micro_batches * rank / world;
  const int64_t my_last = a.micro_batches * (rank + 1) / world;
  for (int64_t step = first_step; step <= a.steps; ++step) {
    auto [x, y] = Batch(a, in_features, step);
    // Per micro-batch: [loss (double), gradient (float32 x numel)].
    std::string mine;
    for (int64_t m = my_first; m < my_last; ++m) {
      optimizer->zero_grad();
      auto pred = model->forward(x.narrow(0, m * micro, micro));
      auto loss = (pred - y.narrow(0, m * micro, micro)).pow(2).sum() / a.global_batch;
      loss.backward();
      double loss_value = loss.template item<double>();
      mine.append(reinterpret_cast<const char*>(&loss_value), sizeof(double));
      for (auto& p : params) {
        auto g = p.grad().contiguous();
        mine.append(static_cast<const char*>(g.data_ptr()), g.nbytes());
      }
    }
    std::vector<std::string> all;
    distckpt::ThrowIfError(comm.AllGather(mine, &all));
    // Sum in micro-batch order, whatever the rank that computed it.
    torch::Tensor total = torch::zeros({numel});
    double total_loss = 0;
    const size_t record = sizeof(double) + numel * sizeof(float);
    for (const std::string& part : all) {
      for (size_t off = 0; off < part.size(); off += record) {
        double lv;
        std::memcpy(&lv, part.data() + off, sizeof(double));
        total_loss += lv;
        auto g = torch::from_blob(const_cast<char*>(part.data() + off + sizeof(double)), {numel});
        total += g;
      }
    }
    int64_t pos = 0;
    for (auto& p : params) {
      p.mutable_grad() = total.narrow(0, pos, p.numel()).view(p.sizes()).clone();
      pos += p.numel();
    }
    optimizer->step();
    if (rank == 0) std::printf("step %lld loss %.9g\n", static_cast<long long>(step), total_loss);
    std::fflush(stdout);
    if (a.save_every > 0 && step % a.save_every == 0) {
      auto tree = distckpt::MakeTrainingState(*model, optimizer.get(), step / a.steps_per_epoch,
                                              total_loss);
      tree.SetScalar("step", step);
      tree.SetScalar("samples_seen", step * a.global_batch);
      std::string dir = checkpointer.Save(tree, step);
      if (rank == 0) std::printf("saved %s\n", dir.c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Args args;
  if (!Parse(argc, argv, &args)) {
    Usage();
    MPI_Finalize();
    return 2;
  }
  at::set_num_threads(1);
  auto comm = distckpt::MakeDefaultCommunicator();
  int rc = 0;
  try {
    rc = args.model == "simple" ? Train<Simple>(args, *comm) : Train<Mlp>(args, *comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distckpt-train: rank %d: %s\n", comm->rank(), e.what());
    rc = 1;
  }
  comm.reset();
  MPI_Finalize();
  return rc;
}
