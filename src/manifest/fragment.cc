#include "manifest/fragment.h"

#include <algorithm>

namespace distckpt {

std::string EncodeFragment(const std::vector<TensorRecord>& records,
                           const std::vector<FileRecord>& files) {
  Manifest fragment;
  fragment.tensors = records;
  fragment.file_records = files;
  return fragment.ToJson();
}

Status MergeFragments(const std::vector<std::string>& fragments, Manifest* manifest) {
  for (size_t r = 0; r < fragments.size(); ++r) {
    const std::string where = "shards of rank " + std::to_string(r);
    auto fragment = Manifest::FromJson(fragments[r], /*validate=*/false);
    if (!fragment.ok()) return fragment.status().Annotate(where);
    for (const FileRecord& f : fragment.value().file_records) manifest->file_records.push_back(f);
    for (TensorRecord& rec : fragment.value().tensors) {
      TensorRecord* target = manifest->FindTensor(rec.path);  // O(log n)
      if (!target) return Internal(where + ": tensor '" + rec.path + "' is not in the plan");
      for (ShardRecord& s : rec.shards) target->shards.push_back(std::move(s));
    }
  }
  for (TensorRecord& t : manifest->tensors) {
    std::sort(t.shards.begin(), t.shards.end(), [](const ShardRecord& a, const ShardRecord& b) {
      return a.flat_start < b.flat_start;
    });
  }
  return Status::Ok();
}

}  // namespace distckpt
