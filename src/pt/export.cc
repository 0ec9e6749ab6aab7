#include "distckpt/export.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "core/bytes.h"
#include "distckpt/manifest_io.h"
#include "distckpt/nccl.h"
#include "distckpt/plan.h"
#include "io/shard_reader.h"
#include "pt/pickle.h"

namespace distckpt {

namespace {

// One leaf of the exported tree, in the order the pickle lists it.
struct Leaf {
  std::string path;
  bool is_tensor = false;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  ScalarValue scalar;
};

bool AllDigits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    parts.push_back(path.substr(start, slash - start));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return parts;
}

struct Node {
  std::map<std::string, Node> children;
  const Leaf* leaf = nullptr;
  int64_t storage = -1;
};

PyPtr ScalarToPy(const std::string& name, const ScalarValue& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return PyValue::Int(*i);
  if (auto* d = std::get_if<double>(&v)) return PyValue::Float(*d);
  if (auto* b = std::get_if<bool>(&v)) return PyValue::Bool(*b);
  if (auto* s = std::get_if<std::string>(&v)) return PyValue::Str(*s);
  std::vector<PyPtr> items;
  if (auto* il = std::get_if<std::vector<int64_t>>(&v)) {
    for (int64_t x : *il) items.push_back(PyValue::Int(x));
  } else if (auto* dl = std::get_if<std::vector<double>>(&v)) {
    for (double x : *dl) items.push_back(PyValue::Float(x));
  } else if (auto* sl = std::get_if<std::vector<std::string>>(&v)) {
    for (const auto& x : *sl) items.push_back(PyValue::Str(x));
  }
  // torch.optim keeps betas as a tuple.
  return name == "betas" ? PyValue::Tuple(std::move(items)) : PyValue::List(std::move(items));
}

// Python's defaults for the hyperparameters LibTorch does not have, so that
// optimizer.load_state_dict gives the same optimizer (AdamW needs decoupled_weight_decay).
void AddPythonDefaults(PyValue& group) {
  auto set_default = [&](const std::string& key, PyPtr value) {
    if (!group.Get(key)) group.dict.emplace_back(PyValue::Str(key), value);
  };
  const bool adam = group.Get("betas") != nullptr;
  set_default("maximize", PyValue::Bool(false));
  set_default("foreach", PyValue::None());
  set_default("differentiable", PyValue::Bool(false));
  set_default("fused", PyValue::None());
  if (adam) {
    set_default("capturable", PyValue::Bool(false));
    set_default("decoupled_weight_decay", PyValue::Bool(false));
  }
}

PyPtr Build(const Node& node, const std::string& name) {
  if (node.leaf) {
    if (!node.leaf->is_tensor) return ScalarToPy(name, node.leaf->scalar);
    PyTensorRef ref;
    ref.storage_key = std::to_string(node.storage);
    ref.dtype = node.leaf->dtype;
    ref.storage_numel = NumElements(node.leaf->shape);
    ref.size = node.leaf->shape;
    ref.stride.assign(ref.size.size(), 1);
    for (int k = static_cast<int>(ref.size.size()) - 2; k >= 0; --k) {
      ref.stride[k] = ref.stride[k + 1] * std::max<int64_t>(ref.size[k + 1], 1);
    }
    return PyValue::Tensor(ref);
  }
  bool numeric = !node.children.empty();
  for (const auto& [k, child] : node.children) numeric = numeric && AllDigits(k);
  std::vector<std::pair<int64_t, const std::pair<const std::string, Node>*>> ordered;
  for (const auto& kv : node.children) {
    ordered.emplace_back(numeric ? std::stoll(kv.first) : 0, &kv);
  }
  if (numeric) {
    std::stable_sort(ordered.begin(), ordered.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  if (numeric && name == "param_groups") {
    std::vector<PyPtr> groups;
    for (const auto& [index, kv] : ordered) {
      PyPtr g = Build(kv->second, kv->first);
      AddPythonDefaults(*g);
      groups.push_back(g);
    }
    return PyValue::List(std::move(groups));
  }
  PyPtr dict = PyValue::Dict();
  for (const auto& [index, kv] : ordered) {
    // Optimizer state is keyed by integer parameter index.
    PyPtr key = numeric && name == "state" ? PyValue::Int(index) : PyValue::Str(kv->first);
    dict->dict.emplace_back(key, Build(kv->second, kv->first));
  }
  // torch.optim's layout always has "state", empty for a fresh optimizer, and
  // optimizer.load_state_dict raises KeyError without it; an empty dict leaves no leaf behind.
  if (node.children.count("param_groups") && !node.children.count("state")) {
    dict->dict.insert(dict->dict.begin(), {PyValue::Str("state"), PyValue::Dict()});
  }
  return dict;
}

void AssignStorages(Node& node, int64_t* next, std::vector<const Leaf*>* order) {
  if (node.leaf && node.leaf->is_tensor) {
    node.storage = (*next)++;
    order->push_back(node.leaf);
  }
  for (auto& [k, child] : node.children) AssignStorages(child, next, order);
}

// Fills `buffer` with the whole tensor `leaf` (rank 0 only in live export).
using TensorSource = std::function<Status(const Leaf& leaf, std::vector<char>* buffer)>;

class Progress {
 public:
  Progress(ProgressFn fn, int64_t total) : fn_(std::move(fn)), total_(total) {}
  void Add(int64_t bytes) {
    done_ += bytes;
    if (fn_) fn_(done_, total_);
  }

 private:
  ProgressFn fn_;
  int64_t total_;
  int64_t done_ = 0;
};

// Writes the archive. `write` is false on ranks that only feed the source (live export).
Status WriteArchive(Env* env, const std::vector<Leaf>& leaves, const std::string& out_path,
                    bool model_only, bool write, const TensorSource& source,
                    const ProgressFn& progress, ExportStats* stats) {
  Node root;
  const std::string model_prefix = "model_state_dict/";
  for (const Leaf& leaf : leaves) {
    std::string path = leaf.path;
    if (model_only) {
      if (path.compare(0, model_prefix.size(), model_prefix) != 0) continue;
      path = path.substr(model_prefix.size());
    }
    Node* node = &root;
    // Module names contain dots, never slashes; each '/' is one dict level.
    for (const std::string& part : Split(path)) node = &node->children[part];
    node->leaf = &leaf;
  }
  int64_t next = 0;
  std::vector<const Leaf*> order;
  AssignStorages(root, &next, &order);
  int64_t total = 0;
  for (const Leaf* leaf : order) {
    total += NumElements(leaf->shape) * c10::elementSize(leaf->dtype);
  }
  Progress meter(progress, total);

  std::unique_ptr<caffe2::serialize::PyTorchStreamWriter> writer;
  const std::string tmp = out_path + ".tmp";
  std::unique_ptr<WritableFile> file;
  Status status;
  if (write) {
    auto created = env->NewWritable(tmp);
    if (!created.ok()) return created.status();
    file = std::move(created).value();
  }
  // The zip writer streams through the Env. It never sees a failed write: its destructor would
  // throw (and terminate) on one; the first error is kept in `status`, later bytes are dropped,
  // and the loop below stops adding records.
  uint64_t written = 0;
  auto append = [&](const void* data, size_t n) -> size_t {
    if (data && status.ok()) status = file->PWrite(written, data, n);
    written += n;
    return n;
  };
  try {
    if (write) {
      writer = std::make_unique<caffe2::serialize::PyTorchStreamWriter>(append);
      const std::string pickle = Pickle(*Build(root, ""));
      writer->writeRecord("data.pkl", pickle.data(), pickle.size());
      writer->writeRecord(".format_version", "1", 1);
      writer->writeRecord(".storage_alignment", "64", 2);
      writer->writeRecord("byteorder", "little", 6);
    }
    std::vector<char> buffer;
    for (size_t i = 0; i < order.size(); ++i) {
      const Leaf& leaf = *order[i];
      Status got = source(leaf, &buffer);
      if (status.ok() && !got.ok()) status = got;
      const int64_t bytes = NumElements(leaf.shape) * c10::elementSize(leaf.dtype);
      if (write && status.ok()) {
        writer->writeRecord("data/" + std::to_string(i), buffer.data(), static_cast<size_t>(bytes));
      }
      if (stats) {
        ++stats->tensors;
        stats->tensor_bytes += bytes;
        stats->largest_tensor_bytes = std::max(stats->largest_tensor_bytes, bytes);
      }
      meter.Add(bytes);
    }
    if (write && status.ok()) writer->writeEndOfFile();
    writer.reset();
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (status.ok())
      status = IoError("cannot write '" + tmp + "': " + what.substr(0, what.find('\n')));
  }
  if (!write) return status;
  // Durable before it replaces anything.
  if (status.ok()) status = file->Sync();
  if (status.ok()) status = file->Close();
  if (status.ok()) status = env->Rename(tmp, out_path);
  if (!status.ok()) (void)env->RemoveAll(tmp);  // best effort: the error above is what matters
  return status;
}

Leaf TensorLeaf(const std::string& path, at::ScalarType dtype, std::vector<int64_t> shape) {
  Leaf leaf;
  leaf.path = path;
  leaf.is_tensor = true;
  leaf.dtype = dtype;
  leaf.shape = std::move(shape);
  return leaf;
}

void AppendScalarLeaves(const std::map<std::string, ScalarValue>& scalars,
                        std::vector<Leaf>* leaves) {
  for (const auto& [path, value] : scalars) {
    Leaf leaf;
    leaf.path = path;
    leaf.scalar = value;
    leaves->push_back(leaf);
  }
}

std::vector<Leaf> LeavesOf(const Manifest& m) {
  std::vector<Leaf> leaves;
  for (const TensorRecord& t : m.tensors)
    leaves.push_back(TensorLeaf(t.path, t.dtype, t.global_shape));
  AppendScalarLeaves(m.scalars, &leaves);
  return leaves;
}

}  // namespace

Result<ExportStats> ExportCheckpoint(const std::string& ckpt_dir, const std::string& out_path,
                                     const ExportOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  ASSIGN_OR_RETURN(Manifest manifest, ReadManifest(ckpt_dir, env));
  ShardReader reader(env, ckpt_dir, &manifest, 0);
  std::vector<Leaf> leaves = LeavesOf(manifest);
  TensorSource source = [&](const Leaf& leaf, std::vector<char>* buffer) -> Status {
    const TensorRecord* rec = manifest.FindTensor(leaf.path);
    const int64_t esize = c10::elementSize(rec->dtype);
    buffer->resize(static_cast<size_t>(rec->nbytes()));
    for (const ShardRecord& s : rec->shards) {
      RETURN_IF_ERROR(reader.Read(*rec, s, 0, s.flat_count, buffer->data() + s.flat_start * esize));
    }
    return Status::Ok();
  };
  ExportStats stats;
  RETURN_IF_ERROR(WriteArchive(env, leaves, out_path, options.model_only, true, source,
                               options.progress, &stats));
  return stats;
}

Status ExportTree(Communicator& comm, const StateTree& tree, const std::string& out_path,
                  const ExportOptions& options) {
  std::vector<Leaf> leaves;
  for (const auto& [path, e] : tree.tensors()) {
    leaves.push_back(TensorLeaf(path, e.tensor.scalar_type(), e.global_shape));
  }
  AppendScalarLeaves(tree.scalars(), &leaves);
  const bool root = comm.rank() == 0;
  // Every rank walks the tensors in the same order, so the gathers pair up.
  TensorSource source = [&](const Leaf& leaf, std::vector<char>* buffer) -> Status {
    const TensorEntry& e = tree.tensor(leaf.path);
    const int64_t esize = c10::elementSize(leaf.dtype);
    const int64_t start = e.placement == PlacementKind::kShardedRows
                              ? e.offset * RowElements(e.global_shape)
                              : e.offset;
    if (e.placement != PlacementKind::kReplicated && e.tensor.is_cuda() &&
        options.device_gatherer) {
      // Shards stay on the GPUs until they reach rank 0; offsets travel over MPI.
      std::vector<at::Tensor> parts;
      RETURN_IF_ERROR(options.device_gatherer->Gather(e.tensor.detach().reshape({-1}), 0, &parts));
      std::vector<std::string> starts;
      RETURN_IF_ERROR(comm.Gather(std::to_string(start), &starts, 0));
      if (!root) return Status::Ok();
      at::Tensor whole = at::empty({NumElements(leaf.shape)}, parts[0].options());
      for (size_t r = 0; r < parts.size(); ++r) {
        whole.narrow(0, std::stoll(starts[r]), parts[r].numel()).copy_(parts[r]);
      }
      at::Tensor host = whole.to(at::kCPU);
      buffer->resize(host.nbytes());
      std::memcpy(buffer->data(), host.data_ptr(), host.nbytes());
      return Status::Ok();
    }
    at::Tensor local = e.tensor.detach().to(at::kCPU).contiguous();
    if (e.placement == PlacementKind::kReplicated) {
      if (root) {
        buffer->resize(local.nbytes());
        std::memcpy(buffer->data(), local.data_ptr(), local.nbytes());
      }
      return Status::Ok();
    }
    ByteWriter w;
    w.PutI64(start);
    w.str().append(static_cast<const char*>(local.data_ptr()), local.nbytes());
    std::vector<std::string> parts;
    RETURN_IF_ERROR(comm.Gather(w.str(), &parts, 0));
    if (!root) return Status::Ok();
    buffer->resize(static_cast<size_t>(NumElements(leaf.shape) * esize));
    for (const std::string& part : parts) {
      int64_t at_elem;
      std::memcpy(&at_elem, part.data(), sizeof(at_elem));
      const size_t n = part.size() - sizeof(at_elem);
      if (at_elem < 0 ||
          at_elem * esize + static_cast<int64_t>(n) > static_cast<int64_t>(buffer->size())) {
        return InvalidArgument("tensor '" + leaf.path + "': a shard lies outside the tensor");
      }
      std::memcpy(buffer->data() + at_elem * esize, part.data() + sizeof(at_elem), n);
    }
    return Status::Ok();
  };
  Env* env = options.env ? options.env : Env::Default();
  Status local = WriteArchive(env, leaves, out_path, options.model_only, root, source,
                              root ? options.progress : ProgressFn(), nullptr);
  return AgreeOnStatus(comm, local).Annotate("export of '" + out_path + "'");
}

}  // namespace distckpt
