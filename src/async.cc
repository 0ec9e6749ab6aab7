#include "distckpt/async.h"

#include <ATen/ATen.h>
#include <mpi.h>

#include <chrono>

namespace distckpt {

AsyncCheckpointer::AsyncCheckpointer(std::string root, CheckpointerOptions options,
                                     HostCopier* copier)
    : root_(std::move(root)), options_(options), copier_(copier) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    int world = 1, provided = MPI_THREAD_SINGLE;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Query_thread(&provided);
    if (world > 1 && provided < MPI_THREAD_MULTIPLE) {
      throw Error(InvalidArgument(
          "asynchronous saves need MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...): the "
          "background thread votes over MPI while training runs its own collectives"));
    }
  }
  comm_ = MakeDefaultCommunicator();  // a duplicate of MPI_COMM_WORLD: its own message space
}

AsyncCheckpointer::~AsyncCheckpointer() {
  if (worker_.joinable()) worker_.join();
}

int64_t AsyncCheckpointer::snapshot_bytes() const {
  int64_t total = 0;
  for (const auto& [path, t] : buffers_) total += static_cast<int64_t>(t.nbytes());
  return total;
}

std::string AsyncCheckpointer::Wait() {
  if (worker_.joinable()) worker_.join();
  ThrowIfError(status_);
  return dir_;
}

void AsyncCheckpointer::SaveAsync(const StateTree& tree, int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  Wait();
  snapshot_ = StateTree();
  // Only the bytes this rank will write are copied: for replicated tensors that is its 1/N
  // share, kept as a flat shard so the background save writes exactly the planned ranges.
  SavePlan plan;
  {
    Checkpointer planner(root_, *comm_, options_);
    ThrowIfError(planner.PlanCollective(tree, &plan));
  }
  std::map<std::string, const WriteItem*> mine;
  for (const WriteItem& item : plan.per_rank[comm_->rank()]) mine[item.path] = &item;
  std::vector<at::Tensor> device_sources, device_buffers;
  for (const auto& [path, entry] : tree.tensors()) {
    at::Tensor src = entry.tensor.detach();
    TensorEntry copy = entry;
    if (entry.placement == PlacementKind::kReplicated) {
      auto it = mine.find(path);
      const int64_t start = it == mine.end() ? 0 : it->second->flat_start;
      const int64_t count = it == mine.end() ? 0 : it->second->flat_count;
      src = src.reshape({-1}).narrow(0, start, count);
      copy.placement = PlacementKind::kShardedFlat;
      copy.offset = start;
    }
    at::Tensor& buffer = buffers_[path];
    if (!buffer.defined() || buffer.sizes() != src.sizes() ||
        buffer.scalar_type() != src.scalar_type()) {
      buffer = at::empty(src.sizes(),
                         at::TensorOptions().dtype(src.scalar_type()).pinned_memory(src.is_cuda()));
    }
    if (src.is_cuda() && copier_) {
      device_sources.push_back(src);
      device_buffers.push_back(buffer);
    } else {
      // Synchronous: the snapshot must be complete before the caller may change the model.
      buffer.copy_(src);
    }
    copy.tensor = buffer;
    snapshot_.mutable_tensors()[path] = copy;
  }
  if (copier_) {
    // Pinned buffers make the device-to-host copies run at full PCIe speed; a failed copy
    // must fail on every rank, before any rank starts writing.
    Status copied;
    if (!device_sources.empty()) copied = copier_->CopyToHost(device_sources, device_buffers);
    ThrowIfError(AgreeOnStatus(*comm_, copied));
  }
  for (const auto& [path, value] : tree.scalars()) snapshot_.SetScalar(path, value);
  status_ = Status::Ok();
  dir_.clear();
  worker_ = std::thread([this, step] {
    Checkpointer writer(root_, *comm_, options_);
    status_ = writer.SaveStatus(snapshot_, step, &dir_);
  });
  last_blocked_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace distckpt
