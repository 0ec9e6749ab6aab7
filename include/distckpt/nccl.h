// DeviceGatherer: gathers CUDA tensors to one rank over NCCL, for live export from GPUs.
//
// MakeNcclGatherer bootstraps an NCCL communicator by broadcasting the ncclUniqueId over the
// (MPI) Communicator, uses one GPU per rank (the local rank, modulo the visible devices), and
// gathers with grouped ncclSend/ncclRecv on its own stream, so shards of different sizes are
// fine. The NCCL path is compiled whenever CUDA and NCCL headers are found (DISTCKPT_WITH_NCCL);
// otherwise MakeNcclGatherer fails with a clear error. Used by one thread at a time.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "distckpt/comm.h"
#include "distckpt/status.h"

namespace distckpt {

class DeviceGatherer {
 public:
  virtual ~DeviceGatherer() = default;
  // Collective. `root` receives every rank's `local` (a CUDA tensor) as CUDA tensors on its
  // device, indexed by rank; `parts` stays empty on other ranks.
  virtual Status Gather(const at::Tensor& local, int root, std::vector<at::Tensor>* parts) = 0;
  virtual int device() const = 0;
};

// True when this build has the NCCL path.
bool NcclCompiledIn();
// Visible CUDA devices; 0 without a GPU or without the NCCL path.
int CudaDeviceCount();
// The CUDA device this rank uses: its rank on its machine modulo the visible devices.
int LocalCudaDevice(const Communicator& comm);
// Collective over `comm`.
Result<std::unique_ptr<DeviceGatherer>> MakeNcclGatherer(Communicator& comm);

}  // namespace distckpt
