// HostCopier: copies device tensors into host buffers, for asynchronous saves.
//
// AsyncCheckpointer (async.h) snapshots CUDA tensors through one; MakeCudaHostCopier (nccl.h)
// gives one that copies on a side stream. Implementations are used by one thread at a time.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "distckpt/status.h"

namespace distckpt {

class HostCopier {
 public:
  virtual ~HostCopier() = default;
  // Copies device[i] into host[i] (same sizes); returns once every copy is done, or an error.
  virtual Status CopyToHost(const std::vector<at::Tensor>& device,
                            const std::vector<at::Tensor>& host) = 0;
};

}  // namespace distckpt
