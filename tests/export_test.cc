// Live export from a running job (ranks 1, 2, 3): rank 0 writes one .pt while shards are
// gathered to it one tensor at a time; the file reads back equal to the global tensors.
#include "distckpt/export.h"

#include <filesystem>

#include "distckpt/checkpoint.h"
#include "distckpt/safetensors.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

TEST(LiveExport, GathersShardsToRankZero) {
  const std::string dir = testing::ScratchDir("export");
  const int r = Comm().rank(), n = Comm().size();
  const at::Tensor rows = Pattern({11, 3}, at::kFloat, 1);
  const at::Tensor flat = Pattern({5, 7}, at::kBFloat16, 2);
  const at::Tensor replicated = Pattern({4}, at::kLong, 3);
  StateTree tree;
  int64_t r0 = 11 * r / n, r1 = 11 * (r + 1) / n;
  tree.SetShardedRows("model_state_dict/rows", rows.narrow(0, r0, r1 - r0).clone(), {11, 3}, r0);
  int64_t e0 = 35 * r / n, e1 = 35 * (r + 1) / n;
  tree.SetShardedFlat("model_state_dict/flat", flat.reshape({-1}).narrow(0, e0, e1 - e0).clone(),
                      {5, 7}, e0);
  tree.SetTensor("optimizer_state_dict/state/0/step", replicated);
  tree.SetScalar("epoch", int64_t{2});
  const std::string out = dir + "/live.pt";
  ThrowIfError(ExportTree(Comm(), tree, out));
  if (r == 0) {
    auto back = ReadPt(out);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_TRUE(BitEqual(back->tensor("model_state_dict/rows").tensor, rows));
    EXPECT_TRUE(BitEqual(back->tensor("model_state_dict/flat").tensor, flat));
    EXPECT_TRUE(BitEqual(back->tensor("optimizer_state_dict/state/0/step").tensor, replicated));
    EXPECT_EQ(back->GetInt("epoch"), 2);
  }
}

// Every rank writes what it holds into the same safetensors files at once; read back through
// ImportSafetensors, every tensor is whole and bit-exact.
TEST(LiveExport, SafetensorsWrittenByEveryRank) {
  const std::string dir = testing::ScratchDir("export-st");
  const int r = Comm().rank(), n = Comm().size();
  const at::Tensor rows = Pattern({11, 300}, at::kFloat, 1);
  const at::Tensor flat = Pattern({5, 7}, at::kBFloat16, 2);
  const at::Tensor replicated = Pattern({1000}, at::kLong, 3);
  StateTree tree;
  int64_t r0 = 11 * r / n, r1 = 11 * (r + 1) / n;
  tree.SetShardedRows("model_state_dict/rows", rows.narrow(0, r0, r1 - r0).clone(), {11, 300}, r0);
  int64_t e0 = 35 * r / n, e1 = 35 * (r + 1) / n;
  tree.SetShardedFlat("model_state_dict/flat", flat.reshape({-1}).narrow(0, e0, e1 - e0).clone(),
                      {5, 7}, e0);
  tree.SetTensor("model_state_dict/replicated", replicated);
  tree.SetTensor("optimizer_state_dict/state/0/step", at::ones({1}));
  tree.SetScalar("epoch", int64_t{2});
  SafetensorsExportOptions options;
  options.prefix = "model_state_dict/";
  options.max_shard_bytes = 8000;  // rows (13 KB) alone, then flat and replicated
  auto stats = ExportTreeSafetensors(Comm(), tree, 7, dir + "/model", options);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->tensors, 3);
  if (r != 0) return;
  EXPECT_EQ(stats->files.size(), 4u);  // 3 shards and the index
  auto imported = ImportSafetensors(dir + "/model", dir + "/root");
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  auto comm = MakeLocalCommunicator();
  Checkpointer ckpt(dir + "/root", *comm);
  StateTree back;
  back.SetTensor("model_state_dict/rows", at::zeros_like(rows));
  back.SetTensor("model_state_dict/flat", at::zeros_like(flat));
  back.SetTensor("model_state_dict/replicated", at::zeros_like(replicated));
  ckpt.Load(*imported, back);
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/rows").tensor, rows));
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/flat").tensor, flat));
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/replicated").tensor, replicated));
  EXPECT_EQ(back.GetInt("epoch"), 2);
  EXPECT_EQ(ValueOrThrow(ReadManifest(*imported)).step, 7);
}

TEST(LiveExport, UnwritableDestinationFailsOnEveryRank) {
  StateTree tree;
  tree.SetTensor("w", at::ones({3}));
  Status st = ExportTree(Comm(), tree, "/nonexistent-dir/x.pt");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("rank 0"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("/nonexistent-dir/x.pt"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace distckpt
