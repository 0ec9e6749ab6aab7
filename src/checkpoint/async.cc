#include "distckpt/async.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "checkpoint/access.h"
#include "core/guarded.h"
#include "core/status_macros.h"
#include "gpu/staging.h"

namespace distckpt {
namespace {

struct HostCopy {
  void* dst;
  const void* src;
  size_t bytes;
};

// The snapshot blocks training, so it uses this node's share of the cores: one memcpy thread
// moves about 10 GB/s, below what the memory system gives to several.
void ParallelCopy(const std::vector<HostCopy>& copies, int ranks_here) {
  size_t total = 0;
  for (const HostCopy& c : copies) total += c.bytes;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t kMinPerThread = 64 << 20;
  const int threads = static_cast<int>(
      std::clamp<size_t>(std::min<size_t>(cores / ranks_here, total / kMinPerThread), 1, 8));
  // Thread t copies the bytes [t*total/threads, (t+1)*total/threads) of the concatenation.
  auto run = [&](int t) {
    const size_t begin = total * t / threads, end = total * (t + 1) / threads;
    size_t at = 0;
    for (const HostCopy& c : copies) {
      const size_t lo = std::max(begin, at), hi = std::min(end, at + c.bytes);
      if (lo < hi) {
        std::memcpy(static_cast<char*>(c.dst) + (lo - at),
                    static_cast<const char*>(c.src) + (lo - at), hi - lo);
      }
      at += c.bytes;
    }
  };
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) workers.emplace_back(run, t);
  run(0);
  for (std::thread& w : workers) w.join();
}

}  // namespace

AsyncCheckpointer::AsyncCheckpointer(std::string root, CheckpointerOptions options)
    : root_(std::move(root)),
      options_(options),
      engine_(EngineFor(options.device_staging, &built_in_engine_)) {
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

AsyncCheckpointer::AsyncCheckpointer(std::string root, CheckpointerOptions options,
                                     std::unique_ptr<Communicator> comm)
    : root_(std::move(root)),
      options_(options),
      engine_(EngineFor(options.device_staging, &built_in_engine_)),
      comm_(std::move(comm)) {}

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

void AsyncCheckpointer::SaveAsync(const StateTree& tree, int64_t step, const std::string& tag) {
  const auto t0 = std::chrono::steady_clock::now();
  Wait();
  // Planned once; the background save writes the snapshot with this very plan.
  if (!planner_) planner_ = std::make_unique<Checkpointer>(root_, *comm_, options_);
  std::shared_ptr<const SavePlan> shared;
  ThrowIfError(CheckpointerAccess::Plan(*planner_, tree, &shared));
  plan_ = std::make_shared<SavePlan>(*shared);  // Snapshot() rewrites its local offsets
  Snapshot(tree);
  for (const auto& [path, value] : tree.scalars()) snapshot_.SetScalar(path, value);
  status_ = Status::Ok();
  dir_.clear();
  worker_ = std::thread([this, step, tag] {
    // Training keeps its cores: the writer yields to it where CPUs are contended (per-thread
    // nice value on Linux; failure to lower priority is harmless).
    setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
    Checkpointer writer(root_, *comm_, options_);
    status_ = CheckpointerAccess::SavePlanned(writer, snapshot_, *plan_, step, &dir_, tag);
  });
  last_blocked_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Copies exactly the bytes this rank's plan writes into reusable host buffers; the snapshot
// tree's tensors hold those bytes only, so the plan's items read them from element 0.
void AsyncCheckpointer::Snapshot(const StateTree& tree) {
  snapshot_ = StateTree();
  std::vector<at::Tensor> device_sources, device_buffers;
  std::vector<HostCopy> host_copies;
  Status local;
  for (WriteItem& item : plan_->per_rank[comm_->rank()]) {
    const TensorEntry& entry = tree.tensor(item.path);
    at::Tensor src =
        entry.tensor.detach().reshape({-1}).narrow(0, item.local_start, item.flat_count);
    item.local_start = 0;
    const bool on_device = engine_->Handles(src);
    at::Tensor& buffer = buffers_[item.path];
    if (!buffer.defined() || buffer.sizes() != src.sizes() ||
        buffer.scalar_type() != src.scalar_type()) {
      auto made = SnapshotBuffer(src, on_device);
      if (!made.ok()) {
        local = made.status().Annotate("tensor '" + item.path + "'");
        break;
      }
      buffer = std::move(made).value();
    }
    if (on_device) {
      device_sources.push_back(src.contiguous());
      device_buffers.push_back(buffer);
    } else if (src.device().is_cpu() && src.is_contiguous()) {
      host_copies.push_back({buffer.data_ptr(), src.data_ptr(), src.nbytes()});
    } else {
      buffer.copy_(src);
    }
    TensorEntry copy = entry;
    copy.tensor = buffer;
    snapshot_.mutable_tensors()[item.path] = copy;
  }
  // Synchronous: the snapshot must be complete before the caller may change the model.
  ParallelCopy(host_copies, comm_->local_size());
  if (local.ok() && !device_sources.empty())
    local = CopyFromDevices(device_sources, device_buffers);
  // A failed copy must fail on every rank, before any rank starts writing.
  ThrowIfError(AgreeOnStatus(*comm_, local));
}

// A host buffer for `src`'s bytes: page-locked from the engine for device tensors.
Result<at::Tensor> AsyncCheckpointer::SnapshotBuffer(const at::Tensor& src, bool on_device) {
  if (!on_device) return at::empty(src.sizes(), at::TensorOptions().dtype(src.scalar_type()));
  ASSIGN_OR_RETURN(at::Tensor bytes, engine_->AllocateHost(static_cast<int64_t>(src.nbytes())));
  return bytes.view(src.scalar_type());
}

Status AsyncCheckpointer::CopyFromDevices(const std::vector<at::Tensor>& sources,
                                          const std::vector<at::Tensor>& buffers) {
  const double deadline =
      options_.save_timeout_seconds > 0 ? MonotonicSeconds() + options_.save_timeout_seconds : 0;
  return Guarded("snapshotting device tensors on rank " + std::to_string(comm_->rank()), [&] {
    RETURN_IF_ERROR(engine_->Start());
    for (size_t i = 0; i < sources.size(); ++i) {
      RETURN_IF_ERROR(engine_->CopyToHost(sources[i], buffers[i], 0));
    }
    return engine_->Finish(deadline);
  });
}

}  // namespace distckpt
