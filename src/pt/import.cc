// Import of torch.save files: the archive is read through the Env, the pickle is parsed without
// running any code, and the Python values are flattened into a StateTree.
#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include <cstring>
#include <map>

#include "checkpoint/access.h"
#include "checkpoint/commit_import.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "distckpt/export.h"
#include "pt/pickle.h"
#include "pt/pt_reader.h"

namespace distckpt {
namespace {

using Archive = caffe2::serialize::PyTorchStreamReader;
using K = PyValue::Kind;

// The zip reader reads the file (or `size` bytes of it from `base`) through the Env; a failed
// read throws (caught by the caller).
class EnvReadAdapter : public caffe2::serialize::ReadAdapterInterface {
 public:
  EnvReadAdapter(std::shared_ptr<ReadableFile> file, size_t size, uint64_t base = 0)
      : file_(std::move(file)), size_(size), base_(base) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what) const override {
    if (pos >= size_) return 0;
    n = std::min<size_t>(n, size_ - pos);
    Status st = file_->PRead(base_ + pos, buf, n);
    if (!st.ok()) throw Error(st.Annotate(what ? what : "reading"));
    return n;
  }

 private:
  std::shared_ptr<ReadableFile> file_;  // shared by the archives of one file's byte ranges
  size_t size_;
  uint64_t base_;
};

// Where the bytes of each storage come from: the zip archive's records, or the storages that
// follow the pickles in the legacy format.
class StorageSource {
 public:
  virtual ~StorageSource() = default;
  // The whole storage that `ref` points into, as a flat tensor of its dtype.
  virtual Result<at::Tensor> Read(const PyTensorRef& ref, const std::string& path) = 0;
};

struct FlattenContext {
  StorageSource& source;
  StateTree* tree;
  std::map<std::string, at::Tensor> storages;  // storage key -> its bytes, read once
};

Status Flatten(FlattenContext& ctx, const PyPtr& v, const std::string& path);

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "/" + key;
}

Status FlattenDict(FlattenContext& ctx, const PyValue& v, const std::string& path) {
  for (const auto& [key, value] : v.dict) {
    ASSIGN_OR_RETURN(std::string k, PathPart(*key, path));
    RETURN_IF_ERROR(Flatten(ctx, value, Join(path, k)));
  }
  return Status::Ok();
}

// Lists of numbers or strings become one scalar; other lists one entry per index.
Status FlattenList(FlattenContext& ctx, const PyValue& v, const std::string& path) {
  bool all_int = true, all_num = true, all_str = true;
  for (const auto& item : v.items) {
    all_int = all_int && item->kind == K::kInt;
    all_num = all_num && (item->kind == K::kInt || item->kind == K::kFloat);
    all_str = all_str && item->kind == K::kString;
  }
  if (all_int) {
    std::vector<int64_t> xs;
    for (const auto& item : v.items) xs.push_back(item->i);
    ctx.tree->SetScalar(path, xs);
  } else if (all_num) {
    std::vector<double> xs;
    for (const auto& item : v.items) xs.push_back(item->kind == K::kInt ? item->i : item->d);
    ctx.tree->SetScalar(path, xs);
  } else if (all_str) {
    std::vector<std::string> xs;
    for (const auto& item : v.items) xs.push_back(item->s);
    ctx.tree->SetScalar(path, xs);
  } else {
    for (size_t i = 0; i < v.items.size(); ++i) {
      RETURN_IF_ERROR(Flatten(ctx, v.items[i], Join(path, std::to_string(i))));
    }
  }
  return Status::Ok();
}

class ZipStorages : public StorageSource {
 public:
  explicit ZipStorages(Archive& archive) : archive_(archive) {}
  Result<at::Tensor> Read(const PyTensorRef& ref, const std::string& path) override;

 private:
  Archive& archive_;
};

Result<at::Tensor> ZipStorages::Read(const PyTensorRef& ref, const std::string& path) {
  Archive& archive = archive_;
  const std::string record = "data/" + ref.storage_key;
  if (!archive.hasRecord(record)) {
    return Corrupt("tensor '" + path + "': storage record '" + record + "' is missing");
  }
  at::Tensor storage = at::empty({ref.storage_numel}, at::TensorOptions().dtype(ref.dtype));
  const size_t want = storage.nbytes();
  size_t got = 0;
  try {
    auto [data, size] = archive.getRecord(record);
    got = size;
    if (size == want) std::memcpy(storage.data_ptr(), data.get(), want);
  } catch (const Error& e) {
    return e.status().Annotate("tensor '" + path + "'");
  } catch (const std::exception& e) {
    return Corrupt("tensor '" + path + "': cannot read record '" + record + "': " + e.what());
  }
  if (got != want) {
    return Corrupt("tensor '" + path + "': record '" + record + "' holds " + std::to_string(got) +
                   " bytes, expected " + std::to_string(want));
  }
  return storage;
}

Status FlattenTensor(FlattenContext& ctx, const PyTensorRef& ref, const std::string& path) {
  auto it = ctx.storages.find(ref.storage_key);
  if (it == ctx.storages.end()) {
    ASSIGN_OR_RETURN(at::Tensor storage, ctx.source.Read(ref, path));
    it = ctx.storages.emplace(ref.storage_key, storage).first;
  }
  const at::Tensor& storage = it->second;
  if (storage.scalar_type() != ref.dtype) {
    return Corrupt("tensor '" + path + "': storage '" + ref.storage_key + "' read as two dtypes");
  }
  int64_t last = ref.offset;
  for (size_t d = 0; d < ref.size.size(); ++d) {
    if (ref.size[d] > 0) last += (ref.size[d] - 1) * ref.stride[d];
  }
  if (ref.offset < 0 || (NumElements(ref.size) > 0 && last >= storage.numel())) {
    return Corrupt("tensor '" + path + "' reaches outside its storage");
  }
  at::Tensor view = storage.as_strided(ref.size, ref.stride, ref.offset);
  // A tensor that is its whole storage (a tied weight) shares it; a part of one is copied out.
  const bool whole = ref.offset == 0 && view.is_contiguous() && view.numel() == storage.numel();
  ctx.tree->SetTensor(path, whole ? view : view.clone());
  return Status::Ok();
}

// Flattens a Python value into the tree under `path`.
Status Flatten(FlattenContext& ctx, const PyPtr& v, const std::string& path) {
  switch (v->kind) {
    case K::kNone:
      return Status::Ok();  // e.g. foreach=None: the optimizer's default
    case K::kBool:
      ctx.tree->SetScalar(path, v->b);
      return Status::Ok();
    case K::kInt:
      ctx.tree->SetScalar(path, v->i);
      return Status::Ok();
    case K::kFloat:
      ctx.tree->SetScalar(path, v->d);
      return Status::Ok();
    case K::kString:
      ctx.tree->SetScalar(path, v->s);
      return Status::Ok();
    case K::kDict:
      return FlattenDict(ctx, *v, path);
    case K::kList:
    case K::kTuple:
      return FlattenList(ctx, *v, path);
    case K::kTensor:
      return FlattenTensor(ctx, v->tensor, path);
    default:
      return Corrupt("'" + path + "' holds an unsupported value");
  }
}

Result<std::unique_ptr<ReadableFile>> OpenPt(Env* env, const std::string& pt_path) {
  if (env->IsDirectory(pt_path)) {
    return InvalidArgument("'" + pt_path +
                           "' is a directory, but neither a PyTorch DCP checkpoint (it has no "
                           ".metadata file) nor a safetensors model directory");
  }
  auto file = env->OpenReadable(pt_path);
  if (!file.ok() && file.status().code() == Code::kNotFound) {
    return NotFound("'" + pt_path + "' does not exist");
  }
  return file;
}

Result<std::unique_ptr<Archive>> OpenArchive(std::shared_ptr<ReadableFile> file, uint64_t size,
                                             const std::string& pt_path, uint64_t base = 0) {
  try {
    auto adapter = std::make_shared<EnvReadAdapter>(std::move(file), size, base);
    return std::make_unique<Archive>(adapter);
  } catch (const Error& e) {
    return e.status();
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return Corrupt("'" + pt_path + "' is not a readable torch.save archive: " + what);
  }
}

// The zip format (PyTorch 1.6 and later): data.pkl and one record per storage.
Result<PyPtr> ReadZipPickle(Archive& archive, const std::string& pt_path) {
  std::string pickle;
  try {
    auto [data, size] = archive.getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const Error& e) {
    return e.status().Annotate("'" + pt_path + "'");
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return Corrupt("'" + pt_path + "' is not a readable torch.save archive: " + what);
  }
  return Unpickle(pickle);
}

// The legacy format (torch.save before PyTorch 1.6, or _use_new_zipfile_serialization=False):
// pickles of the magic number, the protocol version (1001), the system's sizes, the object and
// the sorted storage keys; then each storage as its element count (int64) and its bytes.
class LegacyStorages : public StorageSource {
 public:
  LegacyStorages(ReadableFile* file, std::string pt_path)
      : file_(file), pt_path_(std::move(pt_path)) {}

  // Finds each storage after the pickles (which end at byte `data_start`).
  Status Index(const std::vector<std::string>& keys, const std::map<std::string, int64_t>& esize,
               uint64_t data_start, uint64_t file_size);
  Result<at::Tensor> Read(const PyTensorRef& ref, const std::string& path) override;

 private:
  ReadableFile* file_;
  std::string pt_path_;
  std::map<std::string, std::pair<uint64_t, int64_t>> where_;  // key -> (data offset, numel)
};

Status LegacyStorages::Index(const std::vector<std::string>& keys,
                             const std::map<std::string, int64_t>& esize, uint64_t offset,
                             uint64_t file_size) {
  for (const std::string& key : keys) {
    auto size = esize.find(key);
    if (size == esize.end()) return Corrupt("storage '" + key + "' is listed but never used");
    int64_t numel = 0;
    if (offset + 8 > file_size) return Corrupt("storage '" + key + "' lies past the end");
    RETURN_IF_ERROR(file_->PRead(offset, &numel, sizeof(numel)));
    const uint64_t bytes = static_cast<uint64_t>(numel) * static_cast<uint64_t>(size->second);
    if (numel < 0 || offset + 8 + bytes > file_size) {
      return Corrupt("storage '" + key + "' lies past the end of the file");
    }
    where_[key] = {offset + 8, numel};
    offset += 8 + bytes;
  }
  return Status::Ok();
}

Result<at::Tensor> LegacyStorages::Read(const PyTensorRef& ref, const std::string& path) {
  auto it = where_.find(ref.storage_key);
  if (it == where_.end()) {
    return Corrupt("tensor '" + path + "': storage '" + ref.storage_key + "' is missing");
  }
  at::Tensor storage = at::empty({it->second.second}, at::TensorOptions().dtype(ref.dtype));
  RETURN_IF_ERROR(file_->PRead(it->second.first, storage.data_ptr(), storage.nbytes())
                      .Annotate("tensor '" + path + "'"));
  return storage;
}

// The element size of every storage the object refers to, by key.
void CollectStorages(const PyValue& v, std::map<std::string, int64_t>* esize) {
  if (v.kind == PyValue::Kind::kTensor) {
    (*esize)[v.tensor.storage_key] = static_cast<int64_t>(c10::elementSize(v.tensor.dtype));
  }
  for (const PyPtr& item : v.items) CollectStorages(*item, esize);
  for (const auto& [key, value] : v.dict) CollectStorages(*value, esize);
}

// Whether `head` opens with the legacy format's first pickle, the magic number
// 0x1950a86a20f9469cfc6c; *end: the byte after it.
bool LegacyMagic(const std::string& head, size_t* end) {
  static const char kMagic[] = "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
  size_t pos = 2;  // after PROTO n
  if (head.size() < 2 || static_cast<uint8_t>(head[0]) != 0x80) return false;
  if (head.size() > pos && static_cast<uint8_t>(head[pos]) == 0x95) pos += 9;  // a FRAME
  if (head.compare(pos, sizeof(kMagic) - 1, kMagic, sizeof(kMagic) - 1) != 0) return false;
  *end = pos + sizeof(kMagic) - 1;
  return true;
}

// The four pickles after the magic number, read from a prefix of the file that grows until they
// fit in it. Returns the object; `keys` and `data_start` say where the storages are.
Result<PyPtr> ReadLegacyPickles(ReadableFile* file, uint64_t size, std::vector<std::string>* keys,
                                uint64_t* data_start) {
  for (uint64_t prefix = std::min<uint64_t>(size, 1 << 20);; prefix = std::min(size, prefix * 4)) {
    std::string head(prefix, '\0');
    RETURN_IF_ERROR(file->PRead(0, head.data(), head.size()));
    size_t pos = 0;
    LegacyMagic(head, &pos);
    PyPtr values[4];
    bool truncated = false;
    Status st;
    for (PyPtr& value : values) {
      Result<PyPtr> next = Unpickle(head, &pos, &truncated);
      if (!next.ok()) {
        st = next.status();
        break;
      }
      value = next.value();
    }
    if (truncated && prefix < size) continue;
    RETURN_IF_ERROR(st);
    const PyPtr& version = values[0];
    if (version->kind != PyValue::Kind::kInt || version->i != 1001) {
      return InvalidArgument("unsupported legacy torch.save protocol version");
    }
    const PyPtr little = values[1]->Get("little_endian");
    if (little && little->kind == PyValue::Kind::kBool && !little->b) {
      return InvalidArgument("saved on a big-endian machine, which is not supported");
    }
    if (values[3]->kind != PyValue::Kind::kList) return Corrupt("no list of storage keys");
    for (const PyPtr& key : values[3]->items) {
      if (key->kind != PyValue::Kind::kString) return Corrupt("a storage key is not a string");
      keys->push_back(key->s);
    }
    *data_start = pos;
    return values[2];
  }
}

// The object of a torch.save file, with the source of its storages.
struct PtContents {
  PyPtr root;
  std::unique_ptr<ReadableFile> file;
  std::unique_ptr<Archive> archive;
  std::unique_ptr<StorageSource> storages;
};

Result<PtContents> ReadPtContents(Env* env, const std::string& pt_path) {
  PtContents out;
  ASSIGN_OR_RETURN(out.file, OpenPt(env, pt_path));
  ASSIGN_OR_RETURN(uint64_t size, out.file->Size());
  std::string head(std::min<uint64_t>(size, 512), '\0');
  RETURN_IF_ERROR(out.file->PRead(0, head.data(), head.size()));
  size_t magic_end = 0;
  if (head.rfind("PK\x03\x04", 0) == 0) {
    ASSIGN_OR_RETURN(out.archive, OpenArchive(std::move(out.file), size, pt_path));
    ASSIGN_OR_RETURN(out.root, ReadZipPickle(*out.archive, pt_path));
    out.storages = std::make_unique<ZipStorages>(*out.archive);
  } else if (LegacyMagic(head, &magic_end)) {
    std::vector<std::string> keys;
    uint64_t data_start = 0;
    ASSIGN_OR_RETURN(out.root, ReadLegacyPickles(out.file.get(), size, &keys, &data_start));
    std::map<std::string, int64_t> esize;
    CollectStorages(*out.root, &esize);
    auto legacy = std::make_unique<LegacyStorages>(out.file.get(), pt_path);
    RETURN_IF_ERROR(legacy->Index(keys, esize, data_start, size));
    out.storages = std::move(legacy);
  } else if (head.size() > 262 && head.compare(257, 5, "ustar") == 0) {
    return InvalidArgument(
        "'" + pt_path +
        "' is in the tar format of PyTorch before 0.4; load it with torch.load and save it again");
  } else {
    return InvalidArgument("'" + pt_path +
                           "' is not a file written by torch.save (neither its zip format nor its "
                           "legacy format)");
  }
  return out;
}

}  // namespace

Result<std::string> PathPart(const PyValue& key, const std::string& where) {
  std::string part;
  if (key.kind == K::kString) {
    part = key.s;
  } else if (key.kind == K::kInt) {
    part = std::to_string(key.i);
  } else {
    return InvalidArgument("'" + where + "' has a key that is neither a string nor an int");
  }
  if (part.empty() || part.find('/') != std::string::npos) {
    return InvalidArgument("'" + where + "' has key '" + part + "', which cannot be a path part");
  }
  return part;
}

Result<StateTree> ReadPt(const std::string& pt_path, Env* env) {
  if (!env) env = Env::Default();
  auto contents = ReadPtContents(env, pt_path);
  if (!contents.ok()) {
    const Status& st = contents.status();
    return st.message().find(pt_path) == std::string::npos ? st.Annotate("'" + pt_path + "'") : st;
  }
  const PyPtr& root = contents->root;
  if (root->kind != PyValue::Kind::kDict) {
    return InvalidArgument("'" + pt_path + "' does not hold a dict");
  }
  // A bare state_dict (every value a tensor) becomes the model part of the usual layout.
  bool bare = !root->dict.empty();
  for (const auto& [k, v] : root->dict) bare = bare && v->kind == PyValue::Kind::kTensor;
  StateTree tree;
  FlattenContext ctx{*contents->storages, &tree, {}};
  Status st = Flatten(ctx, root, bare ? "model_state_dict" : "");
  if (!st.ok()) return st.Annotate("'" + pt_path + "'");
  return tree;
}

Status ReadPtObject(const std::shared_ptr<ReadableFile>& file, uint64_t offset, uint64_t length,
                    const std::string& path, StateTree* tree) {
  const std::string what = "'" + file->path() + "' bytes [" + std::to_string(offset) + ", " +
                           std::to_string(offset + length) + ")";
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (offset + length > size) {
    return Corrupt(what + " lie past the end of the file (" + std::to_string(size) + " bytes)");
  }
  ASSIGN_OR_RETURN(auto archive, OpenArchive(file, length, what, offset));
  ASSIGN_OR_RETURN(PyPtr root, ReadZipPickle(*archive, what));
  ZipStorages storages(*archive);
  FlattenContext ctx{storages, tree, {}};
  Status st = Flatten(ctx, root, path);
  return st.ok() ? st : st.Annotate(what);
}

int64_t ImportStep(const StateTree& tree, const ImportOptions& options) {
  if (options.step >= 0) return options.step;
  for (const char* key : {"step", "epoch"}) {
    if (tree.HasScalar(key) && std::holds_alternative<int64_t>(tree.scalar(key))) {
      return tree.GetInt(key);
    }
  }
  return 0;
}

Result<std::string> ImportPt(const std::string& pt_path, const std::string& root,
                             const ImportOptions& options) {
  ASSIGN_OR_RETURN(StateTree tree, ReadPt(pt_path, options.env));
  return CommitImport(tree, root, ImportStep(tree, options), options.env);
}

}  // namespace distckpt
