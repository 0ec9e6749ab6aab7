#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>

#include "core/status_macros.h"
#include "distckpt/nccl.h"

#ifdef DISTCKPT_HAVE_NCCL
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace distckpt {

int LocalCudaDevice(const Communicator& comm) {
  const int count = CudaDeviceCount();
  if (count == 0) return -1;
  return comm.local_rank() % count;
}

#ifdef DISTCKPT_HAVE_NCCL

bool NcclCompiledIn() { return true; }

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

namespace {

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class NcclGatherer : public DeviceGatherer {
 public:
  NcclGatherer(Communicator& comm, int device) : comm_(comm), device_(device) {}
  ~NcclGatherer() override {
    if (nccl_) ncclCommDestroy(nccl_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status Init() {
    RETURN_IF_ERROR(Cuda(cudaSetDevice(device_), "cudaSetDevice"));
    // A blocking stream: it waits for work queued on the legacy default stream.
    RETURN_IF_ERROR(Cuda(cudaStreamCreate(&stream_), "cudaStreamCreate"));
    ncclUniqueId id;
    std::string bytes;
    if (comm_.rank() == 0) {
      RETURN_IF_ERROR(Nccl(ncclGetUniqueId(&id), "ncclGetUniqueId"));
      bytes.assign(reinterpret_cast<const char*>(&id), sizeof(id));
    }
    RETURN_IF_ERROR(comm_.Broadcast(&bytes, 0));
    if (bytes.size() != sizeof(id)) return Internal("malformed ncclUniqueId broadcast");
    std::memcpy(&id, bytes.data(), sizeof(id));
    // Nonblocking: a rank that never joins cannot hold the others past the deadline.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const double deadline = Deadline();
    const ncclResult_t rc = ncclCommInitRankConfig(&nccl_, comm_.size(), id, comm_.rank(), &config);
    if (rc != ncclSuccess && rc != ncclInProgress) return Nccl(rc, "ncclCommInitRank");
    return WaitForNccl(deadline, "ncclCommInitRank");
  }

  Status Gather(const at::Tensor& local, int root, std::vector<at::Tensor>* parts) override {
    if (!local.is_cuda()) return InvalidArgument("NCCL gather of a tensor that is not on a GPU");
    if (!nccl_)
      return Status(Code::kAborted, "the NCCL communicator was aborted after a missed deadline");
    at::Tensor src = local.contiguous();
    const size_t esize = src.element_size();
    // Sizes first (over MPI), so the root can allocate each part.
    std::string mine = std::to_string(src.numel());
    std::vector<std::string> sizes;
    RETURN_IF_ERROR(comm_.Gather(mine, &sizes, root));
    RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
    parts->clear();
    const bool is_root = comm_.rank() == root;
    if (is_root) {
      for (const std::string& s : sizes) {
        parts->push_back(at::empty({std::stoll(s)}, src.options()));
      }
    }
    RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
    if (is_root) {
      for (int r = 0; r < comm_.size(); ++r) {
        at::Tensor& dst = (*parts)[r];
        if (r == root) {
          cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), src.numel() * esize,
                          cudaMemcpyDeviceToDevice, stream_);
        } else if (dst.numel() > 0) {
          RETURN_IF_ERROR(
              Nccl(ncclRecv(dst.data_ptr(), dst.numel() * esize, ncclUint8, r, nccl_, stream_),
                   "ncclRecv"));
        }
      }
    } else if (src.numel() > 0) {
      RETURN_IF_ERROR(
          Nccl(ncclSend(src.data_ptr(), src.numel() * esize, ncclUint8, root, nccl_, stream_),
               "ncclSend"));
    }
    const double deadline = Deadline();
    const ncclResult_t rc = ncclGroupEnd();
    if (rc != ncclSuccess && rc != ncclInProgress) return Nccl(rc, "ncclGroupEnd");
    RETURN_IF_ERROR(WaitForNccl(deadline, "ncclGroupEnd"));
    return WaitForStream(deadline);
  }

  int device() const override { return device_; }

 private:
  // The communicator's collective deadline, as a point on the monotonic clock (0: none).
  double Deadline() const {
    const double timeout = comm_.collective_timeout();
    return timeout > 0 ? MonotonicSeconds() + timeout : 0;
  }
  bool Late(double deadline) const { return deadline > 0 && MonotonicSeconds() > deadline; }

  // A communicator that misses the deadline is aborted (NCCL's only way out of a stuck
  // operation); the caller's status vote then names the rank that is missing.
  Status Abort(const char* what) {
    ncclCommAbort(nccl_);
    nccl_ = nullptr;
    return Status(Code::kAborted, std::string(what) + " on rank " + std::to_string(comm_.rank()) +
                                      " did not complete within the collective deadline of " +
                                      std::to_string(comm_.collective_timeout()) +
                                      " s (NCCL aborted)");
  }

  // Polls the communicator's asynchronous state until its pending operation is issued.
  Status WaitForNccl(double deadline, const char* what) {
    for (;;) {
      ncclResult_t state = ncclSuccess;
      RETURN_IF_ERROR(Nccl(ncclCommGetAsyncError(nccl_, &state), "ncclCommGetAsyncError"));
      if (state == ncclSuccess) return Status::Ok();
      if (state != ncclInProgress) return Nccl(state, what);
      if (Late(deadline)) return Abort(what);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  // Polls the stream (and NCCL's asynchronous errors) instead of a synchronize without end.
  Status WaitForStream(double deadline) {
    for (;;) {
      const cudaError_t rc = cudaStreamQuery(stream_);
      if (rc == cudaSuccess) return Status::Ok();
      if (rc != cudaErrorNotReady) return Cuda(rc, "cudaStreamQuery");
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(nccl_, &state);
      if (state != ncclSuccess && state != ncclInProgress) return Nccl(state, "NCCL gather");
      if (Late(deadline)) return Abort("NCCL gather");
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  Status Cuda(cudaError_t rc, const char* what) const {
    if (rc == cudaSuccess) return Status::Ok();
    return Status(Code::kAborted, std::string(what) + " failed on rank " +
                                      std::to_string(comm_.rank()) + ": " + cudaGetErrorString(rc));
  }
  Status Nccl(ncclResult_t rc, const char* what) const {
    if (rc == ncclSuccess) return Status::Ok();
    return Status(Code::kAborted, std::string(what) + " failed on rank " +
                                      std::to_string(comm_.rank()) + ": " + ncclGetErrorString(rc));
  }

  Communicator& comm_;
  int device_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t nccl_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<DeviceGatherer>> MakeNcclGatherer(Communicator& comm) {
  Status local;
  const int device = LocalCudaDevice(comm);
  if (device < 0) {
    local = NotFound("no CUDA device on rank " + std::to_string(comm.rank()));
  } else if (comm.local_size() > CudaDeviceCount()) {
    // NCCL refuses two ranks of one communicator on the same GPU.
    local = InvalidArgument("NCCL needs a GPU per rank: " + std::to_string(comm.local_size()) +
                            " ranks on the node of rank " + std::to_string(comm.rank()) +
                            " share " + std::to_string(CudaDeviceCount()) + " GPU(s)");
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm, local));
  auto gatherer = std::make_unique<NcclGatherer>(comm, device);
  RETURN_IF_ERROR(AgreeOnStatus(comm, gatherer->Init()));
  return std::unique_ptr<DeviceGatherer>(std::move(gatherer));
}

#else  // !DISTCKPT_HAVE_NCCL

bool NcclCompiledIn() { return false; }
int CudaDeviceCount() { return 0; }
Result<std::unique_ptr<DeviceGatherer>> MakeNcclGatherer(Communicator&) {
  return InvalidArgument(
      "distckpt was built without NCCL (DISTCKPT_WITH_NCCL=OFF or no CUDA/NCCL)");
}

#endif

}  // namespace distckpt
