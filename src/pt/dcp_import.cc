// Import of PyTorch DCP checkpoints (torch.distributed.checkpoint, FileSystemWriter): the
// .metadata pickle is read as plain records (no code runs from it), every tensor is assembled
// from its chunks, each chunk a torch.save archive at a byte range of a .distcp file, and
// every other value (epoch, loss, lists) is the torch.save archive of that value.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "checkpoint/commit_import.h"
#include "core/status_macros.h"
#include "distckpt/env.h"
#include "distckpt/export.h"
#include "pt/pickle.h"
#include "pt/pt_reader.h"

namespace distckpt {
namespace {

using K = PyValue::Kind;

constexpr char kMetadataName[] = ".metadata";
constexpr char kMetadataPrefix[] = "torch.distributed.checkpoint.metadata.";

// Where one item's bytes are: a file of the checkpoint directory and a byte range of it.
struct ItemLocation {
  std::string file;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Items are found by their fully qualified name and, for tensor chunks, the chunk's offsets.
using ItemKey = std::pair<std::string, std::vector<int64_t>>;

bool IsObject(const PyPtr& v, const std::string& cls) {
  return v && v->kind == K::kObject && v->s == std::string(kMetadataPrefix) + cls;
}

Result<std::vector<int64_t>> Ints(const PyPtr& v, const std::string& what) {
  std::vector<int64_t> out;
  if (!v || (v->kind != K::kTuple && v->kind != K::kList)) {
    return Corrupt(what + " is not a sequence of integers");
  }
  for (const PyPtr& x : v->items) {
    if (x->kind != K::kInt) return Corrupt(what + " is not a sequence of integers");
    out.push_back(x->i);
  }
  return out;
}

Result<int64_t> Int(const PyPtr& v, const std::string& what) {
  if (!v || v->kind != K::kInt) return Corrupt(what + " is not an integer");
  return v->i;
}

// storage_data: MetadataIndex(fqn, offset, index) -> _StorageInfo(relative_path, offset,
// length, transform_descriptors).
Result<std::map<ItemKey, ItemLocation>> IndexItems(const PyValue& storage_data) {
  std::map<ItemKey, ItemLocation> items;
  for (const auto& [index, info] : storage_data.dict) {
    const PyPtr fqn = index->Get("fqn");
    const PyPtr path = info->Get("relative_path");
    if (!fqn || fqn->kind != K::kString || !path || path->kind != K::kString) {
      return Corrupt("a storage entry without a name or a file");
    }
    std::vector<int64_t> offsets;
    const PyPtr chunk_offset = index->Get("offset");
    if (chunk_offset && chunk_offset->kind != K::kNone) {
      ASSIGN_OR_RETURN(offsets, Ints(chunk_offset, "the offset of '" + fqn->s + "'"));
    }
    const PyPtr transforms = info->Get("transform_descriptors");
    if (transforms && transforms->kind == K::kList && !transforms->items.empty()) {
      return InvalidArgument("'" + fqn->s +
                             "' is stored through transforms (e.g. compression), which distckpt "
                             "does not read; save the checkpoint without them");
    }
    ItemLocation where{path->s, 0, 0};
    ASSIGN_OR_RETURN(int64_t offset, Int(info->Get("offset"), "the offset of '" + fqn->s + "'"));
    ASSIGN_OR_RETURN(int64_t length, Int(info->Get("length"), "the length of '" + fqn->s + "'"));
    if (offset < 0 || length <= 0) return Corrupt("'" + fqn->s + "' has an empty byte range");
    where.offset = static_cast<uint64_t>(offset);
    where.length = static_cast<uint64_t>(length);
    items[{fqn->s, offsets}] = where;
  }
  return items;
}

// The tree path of `fqn`: its keys as the planner recorded them (planner_data), joined by '/'.
Result<std::string> TreePath(const std::string& fqn, const PyPtr& planner_data) {
  PyPtr keys = planner_data ? planner_data->Get(fqn) : nullptr;
  if (!keys) return fqn;  // saved without the default planner's mapping: one key
  if (keys->kind != K::kTuple && keys->kind != K::kList) return Corrupt("bad key of '" + fqn + "'");
  std::string path;
  for (const PyPtr& key : keys->items) {
    ASSIGN_OR_RETURN(std::string part, PathPart(*key, fqn));
    path += (path.empty() ? "" : "/") + part;
  }
  return path;
}

class DcpReader {
 public:
  DcpReader(Env* env, std::string dir) : env_(env), dir_(std::move(dir)) {}

  Result<StateTree> Read() {
    ASSIGN_OR_RETURN(PyPtr metadata, ReadMetadata());
    const PyPtr entries = metadata->Get("state_dict_metadata");
    const PyPtr storage = metadata->Get("storage_data");
    if (!entries || entries->kind != K::kDict || !storage || storage->kind != K::kDict) {
      return Corrupt("'" + MetadataPath() + "' lists no state or no storage");
    }
    ASSIGN_OR_RETURN(items_, IndexItems(*storage));
    const PyPtr planner_data = metadata->Get("planner_data");
    StateTree tree;
    for (const auto& [name, entry] : entries->dict) {
      if (name->kind != K::kString) return Corrupt("a state entry without a name");
      ASSIGN_OR_RETURN(std::string path, TreePath(name->s, planner_data));
      if (IsObject(entry, "BytesStorageMetadata")) {
        RETURN_IF_ERROR(ReadItem(name->s, {}, path, &tree));
      } else if (IsObject(entry, "TensorStorageMetadata")) {
        Status st = ReadTensor(name->s, *entry, path, &tree);
        if (!st.ok()) return st.Annotate("tensor '" + path + "'");
      } else {
        return InvalidArgument("'" + name->s + "' is stored as " +
                               (entry ? entry->s : std::string("nothing")) +
                               ", which distckpt does not read");
      }
    }
    return tree;
  }

 private:
  std::string MetadataPath() const { return dir_ + "/" + kMetadataName; }

  Result<PyPtr> ReadMetadata() {
    const std::string path = MetadataPath();
    auto file = env_->OpenReadable(path);
    if (!file.ok()) {
      if (file.status().code() == Code::kNotFound) {
        return NotFound("'" + dir_ + "' is not a PyTorch DCP checkpoint (no " + kMetadataName +
                        " file)");
      }
      return file.status();
    }
    ASSIGN_OR_RETURN(uint64_t size, (*file)->Size());
    std::string bytes(size, '\0');
    RETURN_IF_ERROR((*file)->PRead(0, bytes.data(), bytes.size()));
    auto metadata = UnpickleObjects(bytes);
    if (!metadata.ok()) return metadata.status().Annotate("'" + path + "'");
    if (!IsObject(*metadata, "Metadata")) {
      return InvalidArgument("'" + path + "' does not hold DCP checkpoint metadata");
    }
    return metadata;
  }

  Result<ItemLocation> Find(const std::string& fqn, const std::vector<int64_t>& offsets) {
    auto it = items_.find({fqn, offsets});
    if (it == items_.end()) return Corrupt("'" + fqn + "': a chunk is in no .distcp file");
    return it->second;
  }

  // A tensor assembled from its chunks (a single chunk that is the whole tensor is used as is).
  Status ReadTensor(const std::string& fqn, const PyValue& entry, const std::string& path,
                    StateTree* tree) {
    const PyPtr properties = entry.Get("properties");
    at::ScalarType dtype;
    if (!properties || properties->items.empty() || properties->items[0]->kind != K::kGlobal ||
        properties->items[0]->s.rfind("torch.", 0) != 0 ||
        !DtypeFromName(properties->items[0]->s.substr(6), &dtype)) {
      return InvalidArgument("its dtype is not one distckpt knows");
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> size, Ints(entry.Get("size"), "its size"));
    const PyPtr chunks = entry.Get("chunks");
    if (!chunks || chunks->kind != K::kList) return Corrupt("no list of chunks");
    at::Tensor whole;
    int64_t covered = 0;
    for (const PyPtr& chunk : chunks->items) {
      ASSIGN_OR_RETURN(std::vector<int64_t> offsets, Ints(chunk->Get("offsets"), "chunk offsets"));
      ASSIGN_OR_RETURN(std::vector<int64_t> sizes, Ints(chunk->Get("sizes"), "chunk sizes"));
      ASSIGN_OR_RETURN(at::Tensor part, ReadChunk(fqn, offsets));
      if (offsets.size() != size.size() || part.sizes().vec() != sizes ||
          part.scalar_type() != dtype) {
        return Corrupt("a chunk's shape or dtype differs from the metadata");
      }
      if (chunks->items.size() == 1 && sizes == size) {
        whole = part;
        covered = part.numel();
        break;
      }
      if (!whole.defined()) whole = at::empty(size, at::TensorOptions().dtype(dtype));
      at::Tensor target = whole;
      for (size_t d = 0; d < size.size(); ++d) {
        if (offsets[d] < 0 || offsets[d] + sizes[d] > size[d]) {
          return Corrupt("a chunk lies outside the tensor");
        }
        target = target.narrow(static_cast<int64_t>(d), offsets[d], sizes[d]);
      }
      target.copy_(part);
      covered += part.numel();
    }
    if (!whole.defined()) whole = at::empty(size, at::TensorOptions().dtype(dtype));
    if (covered != whole.numel()) {
      return Corrupt("its chunks hold " + std::to_string(covered) + " of " +
                     std::to_string(whole.numel()) + " elements");
    }
    tree->SetTensor(path, whole);
    return Status::Ok();
  }

  Result<at::Tensor> ReadChunk(const std::string& fqn, const std::vector<int64_t>& offsets) {
    StateTree chunk;
    RETURN_IF_ERROR(ReadItem(fqn, offsets, "chunk", &chunk));
    if (!chunk.HasTensor("chunk")) return Corrupt("a chunk that is not a tensor");
    return chunk.tensor("chunk").tensor;
  }

  // The item (fqn, offsets) flattened into `tree` under `path`; each .distcp file is opened
  // once for all the items it holds.
  Status ReadItem(const std::string& fqn, const std::vector<int64_t>& offsets,
                  const std::string& path, StateTree* tree) {
    ASSIGN_OR_RETURN(ItemLocation where, Find(fqn, offsets));
    std::shared_ptr<ReadableFile>& file = files_[where.file];
    if (!file) {
      const std::string file_path = dir_ + "/" + where.file;
      auto opened = env_->OpenReadable(file_path);
      if (!opened.ok() && opened.status().code() == Code::kNotFound) {
        return NotFound("'" + file_path + "' does not exist");
      }
      ASSIGN_OR_RETURN(file, std::move(opened));
    }
    return ReadPtObject(file, where.offset, where.length, path, tree);
  }

  Env* env_;
  std::string dir_;
  std::map<ItemKey, ItemLocation> items_;
  std::map<std::string, std::shared_ptr<ReadableFile>> files_;  // by name in the directory
};

}  // namespace

bool IsDcpCheckpoint(const std::string& path, Env* env) {
  if (!env) env = Env::Default();
  return env->Exists(path + "/" + kMetadataName);
}

Result<StateTree> ReadDcp(const std::string& dcp_dir, Env* env) {
  if (!env) env = Env::Default();
  return DcpReader(env, dcp_dir).Read();
}

Result<std::string> ImportDcp(const std::string& dcp_dir, const std::string& root,
                              const ImportOptions& options) {
  auto tree = ReadDcp(dcp_dir, options.env);
  if (!tree.ok()) {
    const Status& st = tree.status();
    return st.message().find(dcp_dir) == std::string::npos ? st.Annotate("'" + dcp_dir + "'") : st;
  }
  return CommitImport(*tree, root, ImportStep(*tree, options), options.env);
}

}  // namespace distckpt
