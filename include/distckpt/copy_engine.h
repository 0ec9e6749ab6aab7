// CopyEngine: moves bytes between page-locked host buffers and tensors the CPU cannot address
// (CUDA memory), for saves and loads of device tensors.
//
// Saves and loads pass device tensors through a small ring of host buffers (DeviceStaging in
// options.h): a load reads and verifies one piece into a buffer and queues its copy to the
// device while the next piece is read; a save queues device-to-host copies ahead of the writer.
// The engine only queues copies and reports when they are done; the ring decides what goes
// where. MakeDeviceCopyEngine gives the built-in engine (CUDA streams and events through
// LibTorch); tests pass their own to check the ring without a GPU.
//
// Calls come from one thread at a time, between Start and Finish. A copy is queued with a
// ticket (the buffer's index); Wait(ticket) returns once every copy queued with that ticket has
// finished, and only then may the ring refill or read that buffer.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "distckpt/status.h"

namespace distckpt {

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;

  // True for tensors whose bytes this engine moves (the CPU cannot read or write them).
  virtual bool Handles(const at::Tensor& tensor) const = 0;

  // `bytes` of host memory that copies run from and to at full speed (page-locked for CUDA),
  // as a 1-D uint8 tensor. Called once per buffer; the ring keeps the buffers between runs. The
  // ring may drop a buffer whose copy missed its deadline: its memory must outlive the copy
  // (LibTorch's page-locked allocator holds a block until the copies recorded on it end).
  virtual Result<at::Tensor> AllocateHost(int64_t bytes) = 0;

  // A contiguous tensor of `numel` elements on `like`'s device and of its dtype: where a load
  // fills a destination that is not contiguous before copying it into place on the device.
  virtual Result<at::Tensor> AllocateDevice(const at::Tensor& like, int64_t numel);

  // Opens a batch of copies. The copies that follow are ordered after the work already queued
  // on the devices they touch (a save copies what training computed; a load does not overwrite
  // a tensor that queued work still reads).
  virtual Status Start() = 0;

  // Queue a copy of `host` (contiguous CPU) into `device` (contiguous, same dtype and size), or
  // the other way round, marked with `ticket`. Errors name neither tensor: the ring adds that.
  virtual Status CopyToDevice(const at::Tensor& host, const at::Tensor& device, int ticket) = 0;
  virtual Status CopyToHost(const at::Tensor& device, const at::Tensor& host, int ticket) = 0;

  // Returns once every copy queued with `ticket` has finished, or its error; an error of code
  // kAborted if they have not finished by `deadline` (MonotonicSeconds; 0: no deadline).
  virtual Status Wait(int ticket, double deadline) = 0;

  // Closes the batch: every copy queued since Start has finished when it returns Ok, and a load's
  // results are visible to work queued afterwards on any stream.
  virtual Status Finish(double deadline) = 0;
};

// The built-in engine for CUDA tensors: copies run on a side stream per device, which first waits
// for the device's current stream; host buffers are page-locked through LibTorch's allocator.
// Works wherever LibTorch has CUDA; Handles() is false for every tensor elsewhere.
std::unique_ptr<CopyEngine> MakeDeviceCopyEngine();

}  // namespace distckpt
