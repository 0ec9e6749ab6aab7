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

namespace distckpt {
namespace {

using Archive = caffe2::serialize::PyTorchStreamReader;
using K = PyValue::Kind;

// The zip reader reads the file through the Env; a failed read throws (caught by the caller).
class EnvReadAdapter : public caffe2::serialize::ReadAdapterInterface {
 public:
  EnvReadAdapter(std::unique_ptr<ReadableFile> file, size_t size)
      : file_(std::move(file)), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what) const override {
    if (pos >= size_) return 0;
    n = std::min<size_t>(n, size_ - pos);
    Status st = file_->PRead(pos, buf, n);
    if (!st.ok()) throw Error(st.Annotate(what ? what : "reading"));
    return n;
  }

 private:
  std::unique_ptr<ReadableFile> file_;
  size_t size_;
};

struct FlattenContext {
  Archive& archive;
  StateTree* tree;
  std::map<std::string, at::Tensor> storages;  // storage key -> its bytes, read once
};

Status Flatten(FlattenContext& ctx, const PyPtr& v, const std::string& path);

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "/" + key;
}

Status FlattenDict(FlattenContext& ctx, const PyValue& v, const std::string& path) {
  for (const auto& [key, value] : v.dict) {
    std::string k;
    if (key->kind == K::kString) {
      k = key->s;
    } else if (key->kind == K::kInt) {
      k = std::to_string(key->i);
    } else {
      return InvalidArgument("'" + path + "' has a key that is neither a string nor an int");
    }
    if (k.empty() || k.find('/') != std::string::npos) {
      return InvalidArgument("'" + path + "' has key '" + k + "', which cannot be a path part");
    }
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

Result<at::Tensor> ReadStorage(Archive& archive, const PyTensorRef& ref, const std::string& path) {
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
    ASSIGN_OR_RETURN(at::Tensor storage, ReadStorage(ctx.archive, ref, path));
    it = ctx.storages.emplace(ref.storage_key, storage).first;
  }
  int64_t last = ref.offset;
  for (size_t d = 0; d < ref.size.size(); ++d) {
    if (ref.size[d] > 0) last += (ref.size[d] - 1) * ref.stride[d];
  }
  if (ref.offset < 0 || (NumElements(ref.size) > 0 && last >= ref.storage_numel)) {
    return Corrupt("tensor '" + path + "' reaches outside its storage");
  }
  ctx.tree->SetTensor(path, it->second.as_strided(ref.size, ref.stride, ref.offset).clone());
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

Result<std::unique_ptr<Archive>> OpenArchive(Env* env, const std::string& pt_path) {
  auto file = env->OpenReadable(pt_path);
  if (!file.ok()) {
    if (file.status().code() == Code::kNotFound) {
      return NotFound("'" + pt_path + "' does not exist");
    }
    return file.status();
  }
  ASSIGN_OR_RETURN(uint64_t size, file.value()->Size());
  try {
    auto adapter = std::make_shared<EnvReadAdapter>(std::move(file).value(), size);
    return std::make_unique<Archive>(adapter);
  } catch (const Error& e) {
    return e.status();
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return Corrupt("'" + pt_path + "' is not a readable torch.save archive: " + what);
  }
}

}  // namespace

Result<StateTree> ReadPt(const std::string& pt_path, Env* env) {
  if (!env) env = Env::Default();
  ASSIGN_OR_RETURN(std::unique_ptr<Archive> archive, OpenArchive(env, pt_path));
  std::string pickle;
  try {
    auto [data, size] = archive->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const Error& e) {
    return e.status().Annotate("'" + pt_path + "'");
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return Corrupt("'" + pt_path + "' is not a readable torch.save archive: " + what);
  }
  auto root = Unpickle(pickle);
  if (!root.ok()) return root.status().Annotate("'" + pt_path + "'");
  if (root.value()->kind != PyValue::Kind::kDict) {
    return InvalidArgument("'" + pt_path + "' does not hold a dict");
  }
  // A bare state_dict (every value a tensor) becomes the model part of the usual layout.
  bool bare = !root.value()->dict.empty();
  for (const auto& [k, v] : root.value()->dict) bare = bare && v->kind == PyValue::Kind::kTensor;
  StateTree tree;
  FlattenContext ctx{*archive, &tree, {}};
  Status st = Flatten(ctx, root.value(), bare ? "model_state_dict" : "");
  if (!st.ok()) return st.Annotate("'" + pt_path + "'");
  return tree;
}

Result<std::string> ImportPt(const std::string& pt_path, const std::string& root,
                             const ImportOptions& options) {
  ASSIGN_OR_RETURN(StateTree tree, ReadPt(pt_path, options.env));
  int64_t step = options.step;
  if (step < 0) {
    step = 0;
    for (const char* key : {"step", "epoch"}) {
      if (tree.HasScalar(key) && std::holds_alternative<int64_t>(tree.scalar(key))) {
        step = tree.GetInt(key);
        break;
      }
    }
  }
  return CommitImport(tree, root, step, options.env);
}

}  // namespace distckpt
