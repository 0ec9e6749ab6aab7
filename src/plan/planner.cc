#include <algorithm>
#include <map>

#include "core/status_macros.h"
#include "plan/plan.h"

namespace distckpt {

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t RowElements(const std::vector<int64_t>& shape) {
  if (shape.size() <= 1) return 1;
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

namespace {

Status CheckSameOnEveryRank(const std::vector<std::vector<LocalTensorInfo>>& all_ranks) {
  const auto& first = all_ranks[0];
  for (size_t r = 1; r < all_ranks.size(); ++r) {
    const auto& other = all_ranks[r];
    for (size_t i = 0; i < std::max(first.size(), other.size()); ++i) {
      if (i >= first.size() || i >= other.size() || first[i].path != other[i].path) {
        std::string name = i < other.size() ? other[i].path : first[i].path;
        return InvalidArgument("tensor '" + name + "' is not present on every rank (ranks 0 and " +
                               std::to_string(r) + " hold different tensor names)");
      }
      const LocalTensorInfo& a = first[i];
      const LocalTensorInfo& b = other[i];
      if (a.dtype == b.dtype && a.placement == b.placement && a.global_shape == b.global_shape) {
        continue;
      }
      const std::string where = "tensor '" + a.path + "' (ranks 0 and " + std::to_string(r) + ")";
      if (a.dtype != b.dtype) {
        return InvalidArgument(where + ": dtypes differ: " + DtypeName(a.dtype) + " vs " +
                               DtypeName(b.dtype));
      }
      if (a.placement != b.placement) {
        return InvalidArgument(where + ": placements differ: " + PlacementName(a.placement) +
                               " vs " + PlacementName(b.placement));
      }
      if (a.global_shape != b.global_shape) {
        return InvalidArgument(where + ": global shapes differ: " + ShapeString(a.global_shape) +
                               " vs " + ShapeString(b.global_shape));
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status CheckCoverage(const std::vector<StoredRange>& shards, int64_t numel) {
  std::vector<StoredRange> sorted;
  for (const auto& s : shards) {
    if (s.flat_start < 0 || s.flat_count < 0 || s.flat_start + s.flat_count > numel) {
      return Corrupt("range [" + std::to_string(s.flat_start) + ", " +
                     std::to_string(s.flat_start + s.flat_count) + ") lies outside the tensor's " +
                     std::to_string(numel) + " elements");
    }
    if (s.flat_count > 0) sorted.push_back(s);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const StoredRange& a, const StoredRange& b) { return a.flat_start < b.flat_start; });
  int64_t next = 0;
  for (const auto& s : sorted) {
    if (s.flat_start > next) {
      return Corrupt("elements [" + std::to_string(next) + ", " + std::to_string(s.flat_start) +
                     ") are held by no shard");
    }
    if (s.flat_start < next) {
      return Corrupt("elements [" + std::to_string(s.flat_start) + ", " + std::to_string(next) +
                     ") are held by more than one shard");
    }
    next = s.flat_start + s.flat_count;
  }
  if (next != numel) {
    return Corrupt("elements [" + std::to_string(next) + ", " + std::to_string(numel) +
                   ") are held by no shard");
  }
  return Status::Ok();
}

Result<SavePlan> PlanSave(const std::vector<std::vector<LocalTensorInfo>>& all_ranks,
                          int64_t min_split_bytes) {
  if (all_ranks.empty()) return InvalidArgument("no ranks to plan for");
  RETURN_IF_ERROR(CheckSameOnEveryRank(all_ranks));
  std::vector<std::vector<StoredRange>> held(all_ranks.size());
  for (size_t r = 0; r < all_ranks.size(); ++r) {
    for (const LocalTensorInfo& t : all_ranks[r]) {
      if (t.placement != PlacementKind::kReplicated)
        held[r].push_back({t.flat_start, t.flat_count});
    }
  }
  return PlanSaveAgreed(all_ranks[0], held, min_split_bytes);
}

namespace {

// Each rank writes the range it holds of a sharded tensor.
Status PlanSharded(const TensorPlanInfo& t, const std::vector<std::vector<StoredRange>>& held,
                   size_t index, SavePlan* plan) {
  const int world = static_cast<int>(held.size());
  std::vector<StoredRange> ranges;
  for (int r = 0; r < world; ++r) {
    const StoredRange mine = held[r][index];
    ranges.push_back(mine);
    if (mine.flat_count == 0) continue;
    const bool rows = t.placement == PlacementKind::kShardedRows;
    plan->per_rank[r].push_back({t.path, mine.flat_start, mine.flat_count, 0, rows});
  }
  Status covered = CheckCoverage(ranges, NumElements(t.global_shape));
  return covered.ok() ? covered : covered.Annotate("sharded tensor '" + t.path + "'");
}

// A replicated tensor at byte `cursor` of the concatenation of `replicated_bytes` bytes.
void PlanReplicated(const TensorPlanInfo& t, int64_t cursor, int64_t replicated_bytes,
                    int64_t min_split_bytes, SavePlan* plan) {
  const int world = static_cast<int>(plan->per_rank.size());
  const int64_t numel = NumElements(t.global_shape);
  const int64_t esize = c10::elementSize(t.dtype);
  const int64_t bytes = numel * esize;
  const int64_t row = RowElements(t.global_shape);
  if (numel == 0) return;  // nothing to store: the manifest alone describes an empty tensor
  if (bytes < min_split_bytes || world == 1 || t.global_shape.empty()) {
    // Whole tensor to the rank whose interval holds the tensor's middle byte.
    const int64_t mid = cursor + bytes / 2;
    int owner = replicated_bytes ? static_cast<int>(mid * world / replicated_bytes) : 0;
    owner = std::min(owner, world - 1);
    plan->per_rank[owner].push_back({t.path, 0, numel, 0, true});
    return;
  }
  const int64_t rows_total = numel / row;
  int64_t prev_row = 0;
  for (int r = 0; r < world && prev_row < rows_total; ++r) {
    // Rank r's interval ends at byte (r+1)*B/N; round it to a row of this tensor.
    const int64_t end_byte =
        (r + 1 == world) ? replicated_bytes : (replicated_bytes / world) * (r + 1);
    int64_t end_row =
        std::clamp<int64_t>((end_byte - cursor) / (row * esize), prev_row, rows_total);
    if (r + 1 == world) end_row = rows_total;
    if (end_row > prev_row) {
      plan->per_rank[r].push_back(
          {t.path, prev_row * row, (end_row - prev_row) * row, prev_row * row, true});
    }
    prev_row = end_row;
  }
}

}  // namespace

Result<SavePlan> PlanSaveAgreed(const std::vector<LocalTensorInfo>& tensors,
                                const std::vector<std::vector<StoredRange>>& held,
                                int64_t min_split_bytes) {
  if (held.empty()) return InvalidArgument("no ranks to plan for");
  SavePlan plan;
  plan.per_rank.resize(held.size());
  plan.tensors.reserve(tensors.size());
  // Replicated tensors, laid end to end, are cut into `world` equal byte intervals.
  int64_t replicated_bytes = 0;
  size_t sharded = 0;
  for (const LocalTensorInfo& t : tensors) {
    if (t.placement == PlacementKind::kReplicated) {
      replicated_bytes += NumElements(t.global_shape) * c10::elementSize(t.dtype);
    } else {
      ++sharded;
    }
  }
  for (const auto& ranges : held) {
    if (ranges.size() != sharded) return Internal("a rank described a different sharded count");
  }
  int64_t cursor = 0;  // byte position of the current replicated tensor in the concatenation
  size_t sharded_index = 0;
  for (const LocalTensorInfo& t : tensors) {
    plan.tensors.push_back({t.path, t.dtype, t.global_shape, t.placement});
    const TensorPlanInfo& info = plan.tensors.back();
    if (t.placement != PlacementKind::kReplicated) {
      RETURN_IF_ERROR(PlanSharded(info, held, sharded_index++, &plan));
      continue;
    }
    PlanReplicated(info, cursor, replicated_bytes, min_split_bytes, &plan);
    cursor += NumElements(t.global_shape) * c10::elementSize(t.dtype);
  }
  return plan;
}

Result<std::vector<ReadItem>> PlanRead(const std::vector<StoredRange>& shards, int64_t want_start,
                                       int64_t want_count) {
  std::vector<size_t> order(shards.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return shards[a].flat_start < shards[b].flat_start; });
  std::vector<ReadItem> items;
  int64_t next = want_start;
  const int64_t want_end = want_start + want_count;
  for (size_t idx : order) {
    const StoredRange& s = shards[idx];
    int64_t lo = std::max(next, s.flat_start);
    int64_t hi = std::min(want_end, s.flat_start + s.flat_count);
    if (hi <= lo) continue;
    if (lo > next) break;  // gap
    items.push_back({idx, lo - s.flat_start, hi - lo, lo - want_start});
    next = hi;
  }
  if (next < want_end) {
    return Corrupt("elements [" + std::to_string(next) + ", " + std::to_string(want_end) +
                   ") are in no stored shard");
  }
  return items;
}

}  // namespace distckpt
