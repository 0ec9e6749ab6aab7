// Multi-rank save and load (registered for 1, 2, 3 and 4 ranks).
#include <filesystem>

#include "distckpt/checkpoint.h"
#include "distckpt/diff.h"
#include "fault_env.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

// The global tensors every test starts from; each rank takes its part.
at::Tensor GlobalRows() { return Pattern({10, 3}, at::kDouble, 1); }
at::Tensor GlobalFlat() { return Pattern({7, 5}, at::kBFloat16, 2); }
at::Tensor BigReplicated() { return Pattern({1024, 1024}, at::kFloat, 3); }  // 4 MiB: split

std::pair<int64_t, int64_t> Part(int64_t n, int rank, int world) {
  int64_t lo = n * rank / world, hi = n * (rank + 1) / world;
  return {lo, hi - lo};
}

// `make(rank)` gives each rank's tree from the global tensors (or zeros to load into).
StateTree LocalTree(bool zeros) {
  const int r = Comm().rank(), n = Comm().size();
  auto fill = [&](at::Tensor t) { return zeros ? at::zeros_like(t) : t; };
  StateTree tree;
  tree.SetTensor("replicated/big", fill(BigReplicated()));
  tree.SetTensor("replicated/small", fill(Pattern({5}, at::kLong, 4)));
  auto [row0, rows] = Part(10, r, n);
  tree.SetShardedRows("sharded/rows", fill(GlobalRows().narrow(0, row0, rows).clone()), {10, 3},
                      row0);
  // Uneven flat shards: the last rank holds the remainder.
  auto [e0, count] = Part(35, r, n);
  tree.SetShardedFlat("sharded/flat", fill(GlobalFlat().reshape({-1}).narrow(0, e0, count).clone()),
                      {7, 5}, e0);
  tree.SetScalar("step", int64_t{3});
  return tree;
}

TEST(Coordinator, MixedPlacementsRoundTripAndSpreadTheBytes) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  const StateTree saved = LocalTree(false);
  const std::string dir = ckpt.Save(saved, 3);
  StateTree back = LocalTree(true);
  ckpt.Load(dir, back);
  for (const auto& [path, e] : saved.tensors()) {
    EXPECT_TRUE(BitEqual(back.tensor(path).tensor, e.tensor)) << path;
  }
  EXPECT_EQ(back.GetInt("step"), 3);

  // The 4 MiB tensor is split so that every rank writes part of it.
  Manifest m = ValueOrThrow(ReadManifest(dir));
  EXPECT_EQ(m.world_size, Comm().size());
  EXPECT_EQ(static_cast<int>(m.FindTensor("replicated/big")->shards.size()), Comm().size());
  EXPECT_EQ(static_cast<int>(m.files.size()), Comm().size());
}

// The same values stored replicated (split among the writers) and sharded by rows and flat:
// diff compares them in chunks far smaller than a shard, so chunks straddle shard boundaries.
TEST(Coordinator, DiffComparesAcrossPlacementsInSmallChunks) {
  const std::string root = testing::ScratchDir("diff");
  Checkpointer ckpt(root, Comm());
  StateTree whole;
  whole.SetTensor("sharded/rows", GlobalRows());
  whole.SetTensor("sharded/flat", GlobalFlat());
  whole.SetTensor("replicated/big", BigReplicated());
  whole.SetTensor("replicated/small", Pattern({5}, at::kLong, 4));
  whole.SetScalar("step", int64_t{3});
  const std::string a = ckpt.Save(whole, 1);
  const std::string b = ckpt.Save(LocalTree(false), 2);
  StateTree changed = LocalTree(false);
  at::Tensor rows = changed.tensor("sharded/rows").tensor;
  if (Comm().rank() == Comm().size() - 1) rows[rows.size(0) - 1][2] += 0.5;
  const std::string c = ckpt.Save(changed, 3);
  if (Comm().rank() != 0) return;  // one plain process, as the CLI
  DiffOptions options;
  options.chunk_bytes = 8 * 4099;  // the 4 MiB tensor in 256 rounds
  auto same = DiffCheckpoints(a, b, options);
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_TRUE(same->equal());
  EXPECT_EQ(same->tensors_compared, 4);
  EXPECT_EQ(same->elements_compared, 30 + 35 + 1024 * 1024 + 5);
  options.chunk_bytes = 8 * 7;  // 7 elements per round for the small ones
  options.exclude = {"replicated/big"};
  auto differ = DiffCheckpoints(a, c, options);
  ASSERT_TRUE(differ.ok()) << differ.status().ToString();
  ASSERT_EQ(differ->differences.size(), 1u);
  const Difference& d = differ->differences[0];
  EXPECT_EQ(d.path, "sharded/rows");
  EXPECT_EQ(d.differing, 1);
  EXPECT_EQ(d.max_abs, 0.5);
  options.atol = 0.5;
  EXPECT_TRUE(DiffCheckpoints(a, c, options)->equal());
}

TEST(Coordinator, OneFailingRankFailsEveryRankWithTheSameMessage) {
  const std::string root = testing::ScratchDir("root");
  testing::FaultEnv env;
  Checkpointer ckpt(root, Comm(), {&env});
  const std::string old_dir = ckpt.Save(LocalTree(false), 1);
  const int victim = Comm().size() - 1;
  if (Comm().rank() == victim) env.write_budget = 10;
  std::string message;
  try {
    ckpt.Save(LocalTree(false), 2);
  } catch (const Error& e) {
    message = e.what();
  }
  env.write_budget = -1;
  ASSERT_FALSE(message.empty()) << "rank " << Comm().rank() << " did not fail";
  EXPECT_NE(message.find("rank " + std::to_string(victim) + " (host "), std::string::npos)
      << message;
  EXPECT_NE(message.find("No space left on device"), std::string::npos) << message;
  std::vector<std::string> all;
  ASSERT_TRUE(Comm().AllGather(message, &all).ok());
  for (const auto& other : all) EXPECT_EQ(other, message);
  EXPECT_EQ(ckpt.Latest(), old_dir);
  StateTree back = LocalTree(true);
  ckpt.Load(old_dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("replicated/big").tensor, BigReplicated()));
}

TEST(Coordinator, ACollectiveTooLargeForMpiIsRefusedByEveryRankAlike) {
  if (Comm().size() < 2) GTEST_SKIP() << "needs 2 or more ranks";
  const int victim = Comm().size() - 1;
  const std::string mine =
      Comm().rank() == victim ? std::string((size_t{1} << 31) + 1, 'x') : std::string("small");
  std::vector<std::string> all;
  const Status gathered = Comm().Gather(mine, &all, 0);
  const Status all_gathered = Comm().AllGather(mine, &all);
  for (const Status& s : {gathered, all_gathered}) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("2147483649 bytes from rank " + std::to_string(victim) + " (host "),
              std::string::npos)
        << s.ToString();
  }
  // Every rank got the verdict at once (a rank left waiting would fail here by its deadline).
  std::vector<std::string> verdicts;
  ASSERT_TRUE(Comm().AllGather(gathered.message() + all_gathered.message(), &verdicts).ok());
  for (const std::string& v : verdicts) EXPECT_EQ(v, verdicts[0]);
}

TEST(Coordinator, RanksThatDisagreeGetOneClearError) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  StateTree tree = LocalTree(false);
  if (Comm().rank() == Comm().size() - 1) {
    // This rank's flat shard overlaps its neighbour's (or starts past the end on one rank).
    tree.SetShardedFlat("sharded/flat", at::zeros({6}, at::kBFloat16), {7, 5}, 30);
  }
  std::string message;
  try {
    ckpt.Save(tree, 1);
  } catch (const Error& e) {
    message = e.what();
  }
  ASSERT_FALSE(message.empty());
  EXPECT_NE(message.find("sharded/flat"), std::string::npos) << message;
  std::vector<std::string> all;
  ASSERT_TRUE(Comm().AllGather(message, &all).ok());
  for (const auto& other : all) EXPECT_EQ(other, message);
  EXPECT_FALSE(ckpt.Latest().has_value());
}

TEST(Coordinator, DamageSeenByOneRankFailsTheLoadEverywhereAndTouchesNothing) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(LocalTree(false), 1);
  Manifest m = ValueOrThrow(ReadManifest(dir));
  // Damage a row only the last rank reads.
  const TensorRecord* rows = m.FindTensor("sharded/rows");
  const ShardRecord& last = rows->shards.back();
  if (Comm().rank() == 0) {
    testing::FlipBit(dir + "/" + last.file, last.byte_offset + last.flat_count * 8 - 1);
  }
  Comm().Barrier();
  StateTree back = LocalTree(true);
  std::string message;
  try {
    ckpt.Load(dir, back);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("checksum mismatch"), std::string::npos) << message;
  EXPECT_NE(message.find("sharded/rows"), std::string::npos) << message;
  for (const auto& [path, e] : back.tensors()) {
    EXPECT_TRUE(at::all(e.tensor == 0).item<bool>()) << path << " was modified";
  }
}

TEST(Coordinator, ReadOnceLoadsEveryByteFromStorageOnceInTotal) {
  const std::string root = testing::ScratchDir("root");
  CheckpointerOptions options;
  options.piece_bytes = 4096;  // small pieces: little padding around each rank's slice
  Checkpointer ckpt(root, Comm(), options);
  const std::string dir = ckpt.Save(LocalTree(false), 1);
  const int64_t size = ValueOrThrow(ReadManifest(dir)).TotalBytes();
  for (ReadOnce mode : {ReadOnce::kOn, ReadOnce::kOff, ReadOnce::kAuto}) {
    // Auto: per-rank reads while every rank sits on one machine, read-once across machines.
    const bool read_once =
        mode == ReadOnce::kOn || (mode == ReadOnce::kAuto && Comm().node_count() > 1);
    StateTree whole;
    whole.SetTensor("replicated/big", at::zeros({1024, 1024}));
    whole.SetTensor("sharded/rows", at::zeros({10, 3}, at::kDouble));
    whole.SetTensor("sharded/flat", at::zeros({7, 5}, at::kBFloat16));
    LoadOptions load;
    load.read_once = mode;
    ckpt.Load(dir, whole, load);
    EXPECT_TRUE(BitEqual(whole.tensor("replicated/big").tensor, BigReplicated()));
    EXPECT_TRUE(BitEqual(whole.tensor("sharded/rows").tensor, GlobalRows()));
    EXPECT_TRUE(BitEqual(whole.tensor("sharded/flat").tensor, GlobalFlat()));
    double bytes = static_cast<double>(ckpt.last_load_stats().bytes_read);
    ASSERT_TRUE(Comm().AllReduceSum(&bytes, 1).ok());
    const double ratio = bytes / static_cast<double>(size - 5 * 8);  // small/ is not loaded
    // The communicator's picture of the machines is consistent, on one machine or several.
    EXPECT_GE(Comm().node_count(), 1);
    EXPECT_LE(Comm().node_count(), Comm().size());
    EXPECT_LT(Comm().local_rank(), Comm().local_size());
    if (Comm().node_count() == 1) EXPECT_EQ(Comm().local_size(), Comm().size());
    if (read_once) {
      EXPECT_LT(ratio, 1.05) << "read " << bytes << " bytes for " << size << ", read_once mode "
                             << static_cast<int>(mode) << ", " << Comm().node_count() << " node(s)";
    } else {
      EXPECT_GT(ratio, Comm().size() * 0.95) << "read " << bytes << " bytes for " << size;
    }
  }
}

}  // namespace
}  // namespace distckpt
