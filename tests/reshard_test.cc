// Elastic re-sharding: Reshard.Save runs on one rank count, Reshard.Load on others (ctest
// fixtures), and every rank checks that it received exactly its new part.
#include <cstdlib>
#include <filesystem>

#include "distckpt/checkpoint.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

std::string Dir() {
  const char* d = std::getenv("DISTCKPT_RESHARD_DIR");
  return d ? d : "/tmp/distckpt-reshard";
}

at::Tensor Rows() { return Pattern({13, 4}, at::kFloat, 11); }
at::Tensor Flat() { return Pattern({10, 7}, at::kHalf, 12); }  // shards cut mid-row
at::Tensor Flat3d() { return Pattern({4, 5, 6}, at::kDouble, 14); }
at::Tensor Replicated() { return Pattern({600, 1000}, at::kFloat, 13); }

std::pair<int64_t, int64_t> Part(int64_t n) {
  const int r = Comm().rank(), w = Comm().size();
  int64_t lo = n * r / w, hi = n * (r + 1) / w;
  return {lo, hi - lo};
}

StateTree Tree(bool zeros) {
  auto fill = [&](at::Tensor t) { return zeros ? at::zeros_like(t) : t.clone(); };
  StateTree tree;
  auto [r0, rn] = Part(13);
  tree.SetShardedRows("rows", fill(Rows().narrow(0, r0, rn)), {13, 4}, r0);
  auto [f0, fn] = Part(70);
  tree.SetShardedFlat("flat", fill(Flat().reshape({-1}).narrow(0, f0, fn)), {10, 7}, f0);
  auto [g0, gn] = Part(120);
  tree.SetShardedFlat("nested/flat3d", fill(Flat3d().reshape({-1}).narrow(0, g0, gn)), {4, 5, 6},
                      g0);
  tree.SetTensor("replicated", fill(Replicated()));
  return tree;
}

TEST(Reshard, Save) {
  if (Comm().rank() == 0) std::filesystem::remove_all(Dir());
  Comm().Barrier();
  Checkpointer ckpt(Dir(), Comm());
  const std::string dir = ckpt.Save(Tree(false), 1);
  // What the loads below rely on: every tensor indexed with shards that cover it, every byte
  // verifying, and the saving world recorded.
  const Manifest m = ValueOrThrow(ReadManifest(dir));
  EXPECT_EQ(m.world_size, Comm().size());
  const StateTree expected = Tree(false);
  EXPECT_EQ(m.tensors.size(), expected.tensors().size());
  for (const auto& [path, e] : expected.tensors()) {
    const TensorRecord* rec = m.FindTensor(path);
    ASSERT_NE(rec, nullptr) << path;
    EXPECT_EQ(rec->global_shape, e.global_shape) << path;
    int64_t covered = 0;
    for (const ShardRecord& s : rec->shards) covered += s.flat_count;
    EXPECT_EQ(covered, rec->numel()) << path;
  }
  if (Comm().rank() == 0) {
    auto report = VerifyCheckpoint(dir);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_TRUE(report->ok());
    EXPECT_EQ(report->tensors_checked, static_cast<int>(expected.tensors().size()));
  }
}

TEST(Reshard, Load) {
  Checkpointer ckpt(Dir(), Comm());
  auto dir = ckpt.Latest();
  ASSERT_TRUE(dir.has_value());
  StateTree back = Tree(true);
  ckpt.Load(*dir, back);
  const StateTree expected = Tree(false);
  for (const auto& [path, e] : expected.tensors()) {
    EXPECT_TRUE(BitEqual(back.tensor(path).tensor, e.tensor))
        << path << " on rank " << Comm().rank() << " of " << Comm().size();
  }
  // A whole-tensor view of a sharded tensor loads too.
  StateTree whole;
  whole.SetTensor("flat", at::zeros({10, 7}, at::kHalf));
  ckpt.Load(*dir, whole);
  EXPECT_TRUE(BitEqual(whole.tensor("flat").tensor, Flat()));
}

}  // namespace
}  // namespace distckpt
