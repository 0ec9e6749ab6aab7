// Asynchronous saves (ranks 1 and 2): the caller may change the model right after SaveAsync,
// buffers are reused, and a failure reaches every rank through Wait().
#include "distckpt/async.h"

#include "fault_env.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

TEST(Async, SnapshotIsTakenBeforeSaveAsyncReturns) {
  const std::string root = testing::ScratchDir("root");
  AsyncCheckpointer async(root);
  at::Tensor w = Pattern({256, 256}, at::kFloat, 1);
  const at::Tensor original = w.clone();
  StateTree tree;
  tree.SetTensor("w", w);
  tree.SetScalar("epoch", int64_t{1});
  async.SaveAsync(tree, 1);
  w.add_(1.0);  // training goes on at once
  const std::string dir = async.Wait();
  const int64_t held = async.snapshot_bytes();
  async.SaveAsync(tree, 2);  // same shapes: the buffers are reused
  EXPECT_EQ(async.snapshot_bytes(), held);
  async.Wait();

  Checkpointer ckpt(root, Comm());
  StateTree back;
  back.SetTensor("w", at::zeros({256, 256}));
  ckpt.Load(dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("w").tensor, original));
  ckpt.Load(root + "/step-00000002", back);
  EXPECT_TRUE(BitEqual(back.tensor("w").tensor, original + 1.0));
}

TEST(Async, FailureOnOneRankIsRaisedByWaitOnEveryRank) {
  const std::string root = testing::ScratchDir("root");
  testing::FaultEnv env;
  CheckpointerOptions options;
  options.env = &env;
  AsyncCheckpointer async(root, options);
  StateTree tree;
  tree.SetTensor("w", at::ones({4096}));
  if (Comm().rank() == Comm().size() - 1) env.write_budget = 100;
  async.SaveAsync(tree, 1);
  std::string message;
  try {
    async.Wait();
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("No space left on device"), std::string::npos) << message;
  std::vector<std::string> all;
  ASSERT_TRUE(Comm().AllGather(message, &all).ok());
  for (const auto& m : all) EXPECT_EQ(m, message);
  EXPECT_FALSE(LatestCheckpoint(root).has_value());
}

}  // namespace
}  // namespace distckpt
