// What a rank tells the others about its tree before planning, and its wire encoding.
#pragma once

#include <string>
#include <vector>

#include "distckpt/tree.h"
#include "plan/plan.h"

namespace distckpt {

// One LocalTensorInfo per tensor of `tree`, sorted by path. Fails naming the tensor when it is
// undefined, of an unsupported dtype, or its placement does not fit its global shape.
Status DescribeLocal(const StateTree& tree, std::vector<LocalTensorInfo>* out);

std::string EncodeInfos(const std::vector<LocalTensorInfo>& infos);
// What every rank must agree on (paths, dtypes, placements, global shapes), for hashing.
std::string EncodeShapes(const std::vector<LocalTensorInfo>& infos);
// What differs between ranks: the element range held of each sharded tensor, in order.
std::string EncodeHeldRanges(const std::vector<LocalTensorInfo>& infos);
Status DecodeHeldRanges(const std::string& bytes, std::vector<StoredRange>* ranges);
Status DecodeInfos(const std::string& bytes, std::vector<LocalTensorInfo>* infos);

}  // namespace distckpt
