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
#include "distckpt/copy_engine.h"
#include "distckpt/env.h"
#include "distckpt/export.h"
#include "io/file_util.h"
#include "plan/plan.h"
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

// Where a chunk lies in its tensor.
struct Box {
  std::vector<int64_t> offsets, sizes;
};

// A tensor of the checkpoint as its metadata describes it.
struct TensorItem {
  std::string fqn;
  std::string path;  // in the tree
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> size;
  std::vector<Box> chunks;  // checked to tile the tensor
};

class DcpReader {
 public:
  DcpReader(Env* env, std::string dir) : env_(env), dir_(std::move(dir)) {}

  // The checkpoint as a tree: every value read, and every tensor assembled from its chunks
  // unless `deferred` collects it instead (then the tree holds only its shape and dtype, as a
  // tensor on the meta device).
  Result<StateTree> Read(std::vector<TensorItem>* deferred = nullptr) {
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
        auto item = Describe(name->s, path, entry);
        if (!item.ok()) return item.status().Annotate("tensor '" + path + "'");
        if (deferred) {
          tree.SetTensor(path, at::empty(item->size,
                                         at::TensorOptions().dtype(item->dtype).device(at::kMeta)));
          deferred->push_back(std::move(*item));
          continue;
        }
        auto tensor = Assemble(*item);
        if (!tensor.ok()) return tensor.status().Annotate("tensor '" + path + "'");
        tree.SetTensor(path, *tensor);
      } else {
        return InvalidArgument("'" + name->s + "' is stored as " +
                               (entry ? entry->s : std::string("nothing")) +
                               ", which distckpt does not read");
      }
    }
    return tree;
  }

  // The tensor assembled from its chunks (a single chunk that is the whole tensor is used as is).
  Result<at::Tensor> Assemble(const TensorItem& item) {
    if (item.chunks.size() == 1 && item.chunks[0].sizes == item.size) {
      return ReadChunk(item, item.chunks[0]);
    }
    at::Tensor whole = at::empty(item.size, at::TensorOptions().dtype(item.dtype));
    for (const Box& box : item.chunks) {
      ASSIGN_OR_RETURN(at::Tensor part, ReadChunk(item, box));
      at::Tensor target = whole;
      for (size_t d = 0; d < item.size.size(); ++d) {
        target = target.narrow(static_cast<int64_t>(d), box.offsets[d], box.sizes[d]);
      }
      target.copy_(part);
    }
    return whole;
  }

 private:
  // The chunks of a tensor of `size`, checked to lie inside it, not to overlap, and to cover it.
  static Result<std::vector<Box>> Tiles(const PyValue& chunks, const std::vector<int64_t>& size) {
    std::vector<Box> boxes;
    int64_t covered = 0;
    for (const PyPtr& chunk : chunks.items) {
      Box box;
      ASSIGN_OR_RETURN(box.offsets, Ints(chunk->Get("offsets"), "chunk offsets"));
      ASSIGN_OR_RETURN(box.sizes, Ints(chunk->Get("sizes"), "chunk sizes"));
      if (box.offsets.size() != size.size() || box.sizes.size() != size.size()) {
        return Corrupt("a chunk's shape differs from the metadata");
      }
      for (size_t d = 0; d < size.size(); ++d) {
        if (box.offsets[d] < 0 || box.sizes[d] < 0 || box.offsets[d] + box.sizes[d] > size[d]) {
          return Corrupt("a chunk lies outside the tensor");
        }
      }
      const int64_t volume = NumElements(box.sizes);
      for (const Box& other : boxes) {
        bool apart = false;
        for (size_t d = 0; d < size.size() && !apart; ++d) {
          apart = box.offsets[d] + box.sizes[d] <= other.offsets[d] ||
                  other.offsets[d] + other.sizes[d] <= box.offsets[d];
        }
        if (!apart && volume > 0) return Corrupt("two of its chunks overlap");
      }
      covered += volume;
      boxes.push_back(std::move(box));
    }
    const int64_t numel = NumElements(size);
    if (covered != numel) {
      return Corrupt("its chunks hold " + std::to_string(covered) + " of " + std::to_string(numel) +
                     " elements");
    }
    return boxes;
  }

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

  static Result<TensorItem> Describe(const std::string& fqn, const std::string& path,
                                     const PyPtr& entry) {
    TensorItem item{fqn, path};
    const PyPtr properties = entry->Get("properties");
    if (!properties || properties->items.empty() || properties->items[0]->kind != K::kGlobal ||
        properties->items[0]->s.rfind("torch.", 0) != 0 ||
        !DtypeFromName(properties->items[0]->s.substr(6), &item.dtype)) {
      return InvalidArgument("its dtype is not one distckpt knows");
    }
    ASSIGN_OR_RETURN(item.size, Ints(entry->Get("size"), "its size"));
    const PyPtr chunks = entry->Get("chunks");
    if (!chunks || chunks->kind != K::kList) return Corrupt("no list of chunks");
    ASSIGN_OR_RETURN(item.chunks, Tiles(*chunks, item.size));  // before the save writes
    return item;
  }

  Result<ItemLocation> Find(const std::string& fqn, const std::vector<int64_t>& offsets) {
    auto it = items_.find({fqn, offsets});
    if (it == items_.end()) return Corrupt("'" + fqn + "': a chunk is in no .distcp file");
    return it->second;
  }

  Result<at::Tensor> ReadChunk(const TensorItem& item, const Box& box) {
    StateTree chunk;
    RETURN_IF_ERROR(ReadItem(item.fqn, box.offsets, "chunk", &chunk));
    if (!chunk.HasTensor("chunk")) return Corrupt("a chunk that is not a tensor");
    const at::Tensor& part = chunk.tensor("chunk").tensor;
    if (part.sizes().vec() != box.sizes || part.scalar_type() != item.dtype) {
      return Corrupt("a chunk's shape or dtype differs from the metadata");
    }
    return part;
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

// Hands the save the deferred tensors of an import one at a time. The save's staging ring asks
// this engine for the bytes of each meta-device placeholder piece by piece, in order; a tensor
// is assembled from its chunks when its first piece is asked for and dropped after its last, so
// the import holds about one tensor (and the ring's buffers) instead of the whole state.
class DeferredTensorSource : public CopyEngine {
 public:
  DeferredTensorSource(DcpReader* reader, const StateTree& tree, std::vector<TensorItem> items)
      : reader_(reader) {
    for (TensorItem& item : items) {
      const at::Tensor& placeholder = tree.tensor(item.path).tensor;
      const int64_t nbytes = static_cast<int64_t>(placeholder.nbytes());
      pending_.emplace(placeholder.storage().unsafeGetStorageImpl(),
                       Pending{std::move(item), at::Tensor(), nbytes});
    }
  }

  bool Handles(const at::Tensor& tensor) const override { return tensor.is_meta(); }
  Result<at::Tensor> AllocateHost(int64_t bytes) override {
    return at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  }
  Status Start() override { return Status::Ok(); }
  Status CopyToDevice(const at::Tensor&, const at::Tensor&, int) override {
    return Internal("an import does not load tensors");
  }
  // `placeholder` is a range of a placeholder's flat elements: it is filled from the tensor.
  Status CopyToHost(const at::Tensor& placeholder, const at::Tensor& host, int) override {
    auto it = pending_.find(placeholder.storage().unsafeGetStorageImpl());
    if (it == pending_.end()) return Internal("a tensor the import did not defer");
    Pending& p = it->second;
    if (!p.whole.defined()) {
      ASSIGN_OR_RETURN(p.whole, reader_->Assemble(p.item));
      p.whole = p.whole.contiguous().reshape({-1});
    }
    host.copy_(p.whole.narrow(0, placeholder.storage_offset(), placeholder.numel()));
    p.bytes_left -= static_cast<int64_t>(placeholder.nbytes());
    if (p.bytes_left <= 0) pending_.erase(it);
    return Status::Ok();
  }
  Status Wait(int, double) override { return Status::Ok(); }
  Status Finish(double) override { return Status::Ok(); }

 private:
  struct Pending {
    TensorItem item;
    at::Tensor whole;  // flat, while its pieces are being copied
    int64_t bytes_left = 0;
  };
  DcpReader* reader_;
  std::map<const void*, Pending> pending_;  // by the placeholder's storage
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

// Tensors are read while the save writes them, one at a time (DeferredTensorSource).
Result<std::string> ImportDcp(const std::string& dcp_dir, const std::string& root,
                              const ImportOptions& options) {
  DcpReader reader(EnvOrDefault(options.env), dcp_dir);
  std::vector<TensorItem> deferred;
  auto tree = reader.Read(&deferred);
  Result<std::string> dir = tree.status();
  if (tree.ok()) {
    DeferredTensorSource source(&reader, *tree, std::move(deferred));
    dir = CommitImport(*tree, root, ImportStep(*tree, options), options.env, &source);
  }
  if (dir.ok()) return dir;
  const Status& st = dir.status();
  return st.message().find(dcp_dir) == std::string::npos ? st.Annotate("'" + dcp_dir + "'") : st;
}

}  // namespace distckpt
