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

// One tensor, one placement, whichever path saved it: the async save writes only this rank's
// share of a replicated tensor but records it as replicated, with the synchronous save's shards.
TEST(Async, RecordsTheSamePlacementsAndShardsAsASynchronousSave) {
  const std::string root = testing::ScratchDir("root");
  StateTree tree;
  tree.SetTensor("replicated", Pattern({1024, 512}, at::kFloat, 3));  // 2 MiB: split over ranks
  tree.SetTensor("small", Pattern({7}, at::kDouble, 4));
  const int64_t rows = 2 * Comm().size();
  tree.SetShardedRows("rows", Pattern({2, 3}, at::kInt, 5 + Comm().rank()), {rows, 3},
                      2 * Comm().rank());
  Checkpointer ckpt(root, Comm());
  const Manifest sync = ValueOrThrow(ReadManifest(ckpt.Save(tree, 1)));
  AsyncCheckpointer async(root);
  async.SaveAsync(tree, 2);
  const Manifest background = ValueOrThrow(ReadManifest(async.Wait()));
  ASSERT_EQ(sync.tensors.size(), background.tensors.size());
  for (size_t i = 0; i < sync.tensors.size(); ++i) {
    const TensorRecord& a = sync.tensors[i];
    const TensorRecord& b = background.tensors[i];
    EXPECT_EQ(a.path, b.path);
    EXPECT_EQ(a.placement, b.placement)
        << a.path << ": " << PlacementName(a.placement) << " vs " << PlacementName(b.placement);
    ASSERT_EQ(a.shards.size(), b.shards.size()) << a.path;
    for (size_t k = 0; k < a.shards.size(); ++k) {
      EXPECT_EQ(a.shards[k].flat_start, b.shards[k].flat_start) << a.path;
      EXPECT_EQ(a.shards[k].flat_count, b.shards[k].flat_count) << a.path;
      EXPECT_EQ(a.shards[k].checksums, b.shards[k].checksums) << a.path;
    }
  }
  EXPECT_EQ(background.FindTensor("replicated")->placement, PlacementKind::kReplicated);
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
