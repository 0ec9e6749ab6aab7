#include "distckpt/export.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "core/bytes.h"
#include "core/status_macros.h"
#include "distckpt/manifest_io.h"
#include "distckpt/nccl.h"
#include "io/file_util.h"
#include "io/shard_reader.h"
#include "plan/plan.h"
#include "pt/pickle.h"
#include "pt/python_layout.h"

namespace distckpt {

namespace {

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
  PythonTree tree;
  try {
    tree = BuildPythonTree(leaves, model_only);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("cannot lay out the tree for Python: ") + e.what());
  }
  int64_t total = 0;
  for (const Leaf* leaf : tree.tensors) {
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
      const std::string pickle = Pickle(*tree.root);
      writer->writeRecord("data.pkl", pickle.data(), pickle.size());
      writer->writeRecord(".format_version", "1", 1);
      writer->writeRecord(".storage_alignment", "64", 2);
      writer->writeRecord("byteorder", "little", 6);
    }
    std::vector<char> buffer;
    for (size_t i = 0; i < tree.tensors.size(); ++i) {
      const Leaf& leaf = *tree.tensors[i];
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
  Env* env = EnvOrDefault(options.env);
  ASSIGN_OR_RETURN(Manifest manifest, ReadManifest(ckpt_dir, env));
  ShardReader reader(env, ckpt_dir, &manifest, 0);
  reader.set_mapped(false);  // each byte once: pread keeps the resident size to the buffers
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
  Env* env = EnvOrDefault(options.env);
  Status local = WriteArchive(env, leaves, out_path, options.model_only, root, source,
                              root ? options.progress : ProgressFn(), nullptr);
  return AgreeOnStatus(comm, local).Annotate("export of '" + out_path + "'");
}

}  // namespace distckpt
