// The planner is plain data: these tests need no MPI.
#include "plan/plan.h"

#include <gtest/gtest.h>

#include <map>

namespace distckpt {
namespace {

LocalTensorInfo Replicated(const std::string& path, std::vector<int64_t> shape,
                           at::ScalarType dtype = at::kFloat) {
  LocalTensorInfo t;
  t.path = path;
  t.dtype = dtype;
  t.global_shape = shape;
  t.flat_count = NumElements(shape);
  return t;
}

// Every element of every tensor written exactly once; returns bytes written per rank.
std::vector<int64_t> CheckExactlyOnce(const SavePlan& plan) {
  std::map<std::string, std::vector<StoredRange>> ranges;
  std::vector<int64_t> bytes(plan.per_rank.size());
  std::map<std::string, const TensorPlanInfo*> infos;
  for (const auto& t : plan.tensors) infos[t.path] = &t;
  for (size_t r = 0; r < plan.per_rank.size(); ++r) {
    std::map<std::string, int> per_tensor;
    for (const WriteItem& w : plan.per_rank[r]) {
      ranges[w.path].push_back({w.flat_start, w.flat_count});
      bytes[r] += w.flat_count * c10::elementSize(infos.at(w.path)->dtype);
      EXPECT_EQ(++per_tensor[w.path], 1) << "rank " << r << " writes " << w.path << " twice";
      if (w.row_aligned) {
        EXPECT_EQ(w.flat_start % RowElements(infos.at(w.path)->global_shape), 0);
      }
    }
  }
  for (const auto& t : plan.tensors) {
    EXPECT_TRUE(CheckCoverage(ranges[t.path], NumElements(t.global_shape)).ok()) << t.path;
  }
  return bytes;
}

TEST(PlanSave, SpreadsReplicatedBytesEvenly) {
  std::vector<LocalTensorInfo> tree;
  for (int i = 0; i < 10; ++i) tree.push_back(Replicated("t" + std::to_string(i), {1024, 256}));
  for (int world : {1, 2, 3, 4, 6}) {
    std::vector<std::vector<LocalTensorInfo>> all(world, tree);
    auto plan = PlanSave(all, 1 << 20);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    auto bytes = CheckExactlyOnce(plan.value());
    const int64_t total = 10LL * 1024 * 256 * 4;
    for (int r = 0; r < world; ++r) {
      // Within one row of the ideal share.
      EXPECT_NEAR(static_cast<double>(bytes[r]), static_cast<double>(total) / world, 256 * 4 + 1)
          << "world " << world << " rank " << r;
    }
  }
}

TEST(PlanSave, SplitsOneLargeTensorAtRowBoundaries) {
  std::vector<std::vector<LocalTensorInfo>> all(4, {Replicated("big", {1001, 1024})});
  auto plan = PlanSave(all, 1 << 20);
  ASSERT_TRUE(plan.ok());
  auto bytes = CheckExactlyOnce(plan.value());
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(plan->per_rank[r].size(), 1u);
    EXPECT_TRUE(plan->per_rank[r][0].row_aligned);
    EXPECT_GT(bytes[r], 0);
  }
}

TEST(PlanSave, KeepsSmallTensorsWholeAndSpreadsThem) {
  std::vector<LocalTensorInfo> tree;
  for (int i = 0; i < 8; ++i) tree.push_back(Replicated("s" + std::to_string(i), {100}));
  tree.push_back(Replicated("scalar", {}));
  std::vector<std::vector<LocalTensorInfo>> all(4, tree);
  auto plan = PlanSave(all, 1 << 20);
  ASSERT_TRUE(plan.ok());
  CheckExactlyOnce(plan.value());
  int writers = 0;
  for (const auto& items : plan->per_rank) {
    for (const auto& w : items) EXPECT_EQ(w.flat_start, 0) << "small tensors are never cut";
    writers += !items.empty();
  }
  EXPECT_EQ(writers, 4);
}

TEST(PlanSave, ShardedTensorsAreWrittenByTheirOwners) {
  std::vector<std::vector<LocalTensorInfo>> all(3);
  for (int r = 0; r < 3; ++r) {
    LocalTensorInfo t = Replicated("rows", {9, 4});
    t.placement = PlacementKind::kShardedRows;
    t.flat_start = r * 12;
    t.flat_count = 12;
    all[r].push_back(t);
  }
  auto plan = PlanSave(all, 1 << 20);
  ASSERT_TRUE(plan.ok());
  CheckExactlyOnce(plan.value());
  for (int r = 0; r < 3; ++r) {
    ASSERT_EQ(plan->per_rank[r].size(), 1u);
    EXPECT_EQ(plan->per_rank[r][0].flat_start, r * 12);
    EXPECT_EQ(plan->per_rank[r][0].local_start, 0);
  }
}

TEST(PlanSave, RejectsGapsAndOverlapsNamingTheRange) {
  for (int64_t second_start : {5, 3}) {  // gap at [4,5), overlap at [3,4)
    std::vector<std::vector<LocalTensorInfo>> all(2);
    for (int r = 0; r < 2; ++r) {
      LocalTensorInfo t = Replicated("flat", {8});
      t.placement = PlacementKind::kShardedFlat;
      t.flat_start = r == 0 ? 0 : second_start;
      t.flat_count = r == 0 ? 4 : 8 - second_start;
      all[r].push_back(t);
    }
    auto plan = PlanSave(all, 1);
    ASSERT_FALSE(plan.ok());
    EXPECT_NE(plan.status().message().find("'flat'"), std::string::npos);
    EXPECT_NE(plan.status().message().find(second_start == 5 ? "[4, 5)" : "[3, 4)"),
              std::string::npos)
        << plan.status().message();
  }
}

TEST(PlanSave, RejectsRanksThatDisagree) {
  std::vector<std::vector<LocalTensorInfo>> all = {{Replicated("w", {4, 4})},
                                                   {Replicated("w", {4, 5})}};
  auto plan = PlanSave(all, 1);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("tensor 'w'"), std::string::npos);
  all = {{Replicated("w", {4})}, {Replicated("v", {4})}};
  EXPECT_FALSE(PlanSave(all, 1).ok());
  all = {{Replicated("w", {4})}, {Replicated("w", {4}, at::kDouble)}};
  EXPECT_NE(PlanSave(all, 1).status().message().find("dtypes differ"), std::string::npos);
}

TEST(PlanRead, StitchesRangesAcrossShards) {
  std::vector<StoredRange> shards = {{10, 10}, {0, 10}, {20, 5}};
  auto items = PlanRead(shards, 5, 18);
  ASSERT_TRUE(items.ok());
  ASSERT_EQ(items->size(), 3u);
  EXPECT_EQ((*items)[0].shard_index, 1u);
  EXPECT_EQ((*items)[0].shard_elem, 5);
  EXPECT_EQ((*items)[0].count, 5);
  EXPECT_EQ((*items)[1].shard_index, 0u);
  EXPECT_EQ((*items)[1].dest_elem, 5);
  EXPECT_EQ((*items)[2].count, 3);
  EXPECT_EQ((*items)[2].dest_elem, 15);
}

TEST(PlanRead, NamesTheMissingRange) {
  auto items = PlanRead({{0, 10}, {12, 8}}, 0, 20);
  ASSERT_FALSE(items.ok());
  EXPECT_NE(items.status().message().find("[10, 20)"), std::string::npos);
}

}  // namespace
}  // namespace distckpt
