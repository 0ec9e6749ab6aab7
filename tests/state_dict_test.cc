// Module and optimizer state through a checkpoint: a resumed optimizer continues exactly.
#include "distckpt/state_dict.h"

#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;

struct Net : torch::nn::Module {
  explicit Net(int hidden = 8) {
    a = register_module("a", torch::nn::Linear(4, hidden));
    b = register_module("b", torch::nn::Linear(hidden, 2));
    register_buffer("running", at::arange(3, at::kFloat));
  }
  at::Tensor forward(at::Tensor x) { return b->forward(at::relu(a->forward(x))); }
  torch::nn::Linear a{nullptr}, b{nullptr};
};

std::unique_ptr<torch::optim::Optimizer> Make(const std::string& kind, Net& net) {
  if (kind == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        net.parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(true));
  }
  if (kind == "adamw") {
    return std::make_unique<torch::optim::AdamW>(net.parameters(),
                                                 torch::optim::AdamWOptions(0.01).amsgrad(true));
  }
  return std::make_unique<torch::optim::Adam>(net.parameters(), torch::optim::AdamOptions(0.01));
}

void Step(Net& net, torch::optim::Optimizer& opt, int64_t seed) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  auto x = at::randn({16, 4}, gen);
  opt.zero_grad();
  net.forward(x).pow(2).sum().backward();
  opt.step();
}

class OptimizerRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(OptimizerRoundTrip, ResumedRunMatchesUninterruptedBitForBit) {
  const std::string root = testing::ScratchDir(GetParam());
  torch::manual_seed(0);
  Net net;
  auto opt = Make(GetParam(), net);
  for (int s = 0; s < 3; ++s) Step(net, *opt, s);
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(MakeTrainingState(net, opt.get(), 4, 0.25), 3);

  torch::manual_seed(99);  // different initial weights
  Net resumed;
  auto resumed_opt = Make(GetParam(), resumed);
  static_cast<torch::optim::OptimizerOptions&>(resumed_opt->param_groups()[0].options())
      .set_lr(123.0);
  TrainingMeta meta = LoadTrainingState(ckpt, dir, resumed, resumed_opt.get());
  EXPECT_EQ(meta.step, 3);
  EXPECT_EQ(meta.epoch, 4);
  EXPECT_EQ(meta.loss, 0.25);
  EXPECT_EQ(resumed_opt->param_groups()[0].options().get_lr(),
            opt->param_groups()[0].options().get_lr());
  for (int s = 3; s < 6; ++s) {
    Step(net, *opt, s);
    Step(resumed, *resumed_opt, s);
  }
  auto p1 = net.named_parameters(), p2 = resumed.named_parameters();
  for (const auto& item : p1) EXPECT_TRUE(BitEqual(item.value(), p2[item.key()])) << item.key();
  EXPECT_TRUE(BitEqual(resumed.named_buffers()["running"], net.named_buffers()["running"]));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, OptimizerRoundTrip, ::testing::Values("sgd", "adam", "adamw"));

TEST(StateDict, PythonLayout) {
  torch::manual_seed(0);
  Net net;
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(0.01));
  Step(net, opt, 0);
  StateTree tree = MakeTrainingState(net, &opt, 1, 2.0);
  EXPECT_TRUE(tree.HasTensor("model_state_dict/a.weight"));
  EXPECT_TRUE(tree.HasTensor("model_state_dict/running"));
  const auto& step = tree.tensor("optimizer_state_dict/state/0/step").tensor;
  EXPECT_EQ(step.dim(), 0);
  EXPECT_EQ(step.scalar_type(), at::kFloat);
  EXPECT_EQ(step.item<float>(), 1.0f);
  EXPECT_TRUE(tree.HasTensor("optimizer_state_dict/state/3/exp_avg_sq"));
  EXPECT_EQ(
      std::get<std::vector<int64_t>>(tree.scalar("optimizer_state_dict/param_groups/0/params")),
      (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(
      std::get<std::vector<double>>(tree.scalar("optimizer_state_dict/param_groups/0/betas"))[1],
      0.999);
}

TEST(StateDict, DifferentModelIsRejectedAndLeftUntouched) {
  const std::string root = testing::ScratchDir("m");
  torch::manual_seed(0);
  Net net;
  torch::optim::Adam opt(net.parameters());
  Step(net, opt, 0);
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(MakeTrainingState(net, &opt, 0, 0), 1);

  Net wider(9);
  torch::optim::Adam wider_opt(wider.parameters());
  auto before = wider.a->weight.clone();
  try {
    LoadTrainingState(ckpt, dir, wider, &wider_opt);
    FAIL() << "loaded into a model of another shape";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "tensor 'model_state_dict/a.bias' differs: checkpoint has float32 [8], "
                  "model has float32 [9]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(BitEqual(wider.a->weight, before));
  EXPECT_TRUE(wider_opt.state().empty());

  // An SGD optimizer cannot take Adam state.
  Net same;
  torch::optim::SGD sgd(same.parameters(), torch::optim::SGDOptions(0.1).momentum(0.5));
  EXPECT_THROW(LoadTrainingState(ckpt, dir, same, &sgd), Error);
}

// Adam and AdamW keep the same tensors; the checkpoint's decoupled_weight_decay tells them apart.
TEST(StateDict, AdamWCheckpointIsRefusedByAdamAndTheOtherWayRound) {
  const std::string root = testing::ScratchDir("aw");
  torch::manual_seed(0);
  Net net;
  torch::optim::AdamW adamw(net.parameters());
  Step(net, adamw, 0);
  Checkpointer ckpt(root, Comm());
  const std::string adamw_dir = ckpt.Save(MakeTrainingState(net, &adamw, 0, 0), 1);
  torch::optim::Adam adam(net.parameters());
  Step(net, adam, 0);
  const std::string adam_dir = ckpt.Save(MakeTrainingState(net, &adam, 0, 0), 2);

  Net fresh;
  torch::optim::Adam fresh_adam(fresh.parameters());
  auto before = fresh.a->weight.clone();
  try {
    LoadTrainingState(ckpt, adamw_dir, fresh, &fresh_adam);
    FAIL() << "an AdamW checkpoint loaded into Adam";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds AdamW state"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("the optimizer is Adam"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(BitEqual(fresh.a->weight, before));
  EXPECT_TRUE(fresh_adam.state().empty());
  torch::optim::AdamW fresh_adamw(fresh.parameters());
  EXPECT_THROW(LoadTrainingState(ckpt, adam_dir, fresh, &fresh_adamw), Error);
  EXPECT_NO_THROW(LoadTrainingState(ckpt, adamw_dir, fresh, &fresh_adamw));
}

// A resume reads the manifest once: the caller's copy is used by every later step.
TEST(StateDict, ResumeReadsTheManifestOnce) {
  class CountingEnv : public EnvWrapper {
   public:
    CountingEnv() : EnvWrapper(Env::Default()) {}
    int manifest_opens = 0;
    Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& p) override {
      if (p.size() >= 11 && p.compare(p.size() - 11, 11, "manifest.h5") == 0) ++manifest_opens;
      return target()->OpenReadable(p);
    }
  } env;
  const std::string root = testing::ScratchDir("once");
  torch::manual_seed(0);
  Net net;
  torch::optim::Adam opt(net.parameters());
  Step(net, opt, 0);
  CheckpointerOptions options;
  options.env = &env;
  Checkpointer ckpt(root, Comm(), options);
  StateTree tree = MakeTrainingState(net, &opt, 0, 0);
  AddPerRankTensor(tree, "rank_state/rng", at::arange(4), Comm());
  const std::string dir = ckpt.Save(tree, 1);
  env.manifest_opens = 0;
  const Manifest manifest = ValueOrThrow(ReadManifest(dir, &env));
  LoadTrainingState(ckpt, dir, net, &opt, LoadOptions{.manifest = &manifest});
  auto rng = LoadPerRankTensor(ckpt, dir, "rank_state/rng", LoadOptions{.manifest = &manifest});
  ASSERT_TRUE(rng.has_value());
  EXPECT_TRUE(at::equal(*rng, at::arange(4)));
  EXPECT_EQ(env.manifest_opens, 1);  // this rank's own read above; the loads read it no more
}

}  // namespace
}  // namespace distckpt
