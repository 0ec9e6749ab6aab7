// The planner: who writes and who reads which elements of which tensor.
//
// Plans are plain data computed identically on every rank from the same inputs (the
// all-gathered description of every rank's tree, or the manifest), so they can be tested
// without MPI. Every range is in elements of the flattened global tensor. A rank writes at
// most one contiguous range per tensor, and every element is written exactly once.
// Replicated tensors are spread so that each rank writes about 1/N of their bytes: the
// replicated tensors are laid end to end and cut into N equal byte intervals, rounded to row
// boundaries; tensors under `min_split_bytes` are never cut.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include "distckpt/status.h"
#include "distckpt/tree.h"

namespace distckpt {

// One rank's view of one tensor, as every rank sees it after the all-gather.
struct LocalTensorInfo {
  std::string path;
  at::ScalarType dtype = at::ScalarType::Float;
  std::vector<int64_t> global_shape;
  PlacementKind placement = PlacementKind::kReplicated;
  int64_t flat_start = 0;  // first element held (sharded) or 0 (replicated)
  int64_t flat_count = 0;  // elements held
};

// A stored shard of one tensor, as the manifest lists it.
struct StoredRange {
  int64_t flat_start = 0;
  int64_t flat_count = 0;
};

struct WriteItem {
  std::string path;
  int64_t flat_start = 0;  // in the global tensor
  int64_t flat_count = 0;
  int64_t local_start = 0;   // element offset into this rank's local tensor
  bool row_aligned = false;  // range covers whole rows: stored with the tensor's row shape
};

struct TensorPlanInfo {
  std::string path;
  at::ScalarType dtype = at::ScalarType::Float;
  std::vector<int64_t> global_shape;
  PlacementKind placement = PlacementKind::kReplicated;
};

struct SavePlan {
  std::vector<TensorPlanInfo> tensors;           // sorted by path
  std::vector<std::vector<WriteItem>> per_rank;  // per_rank[r]: what rank r writes
};

int64_t NumElements(const std::vector<int64_t>& shape);
// Elements in one dim-0 row (1 for 0-d and 1-d tensors).
int64_t RowElements(const std::vector<int64_t>& shape);

// all_ranks[r] lists rank r's tensors. Fails (naming the tensor and ranks) when ranks disagree
// on names, dtypes, shapes or placement, or when sharded ranges overlap or leave gaps.
Result<SavePlan> PlanSave(const std::vector<std::vector<LocalTensorInfo>>& all_ranks,
                          int64_t min_split_bytes);

// The same plan once the ranks are known to agree on names, dtypes, shapes and placements:
// `tensors` is any rank's list (its flat ranges unused) and held[r] lists, for each sharded
// tensor in order, the element range rank r holds. Fails on sharded ranges that overlap or
// leave gaps.
Result<SavePlan> PlanSaveAgreed(const std::vector<LocalTensorInfo>& tensors,
                                const std::vector<std::vector<StoredRange>>& held,
                                int64_t min_split_bytes);

// One read: elements [shard_elem, shard_elem + count) of stored shard `shard_index` go to
// element `dest_elem` of the destination.
struct ReadItem {
  size_t shard_index = 0;
  int64_t shard_elem = 0;
  int64_t count = 0;
  int64_t dest_elem = 0;
};

// The reads that fill elements [want_start, want_start + want_count) of a tensor. Fails
// naming the first element no shard covers.
Result<std::vector<ReadItem>> PlanRead(const std::vector<StoredRange>& shards, int64_t want_start,
                                       int64_t want_count);

// Checks that shards cover [0, numel) exactly once; names the gap or overlap on failure.
Status CheckCoverage(const std::vector<StoredRange>& shards, int64_t numel);

}  // namespace distckpt
