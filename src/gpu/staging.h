// StagingRing: moves device tensors to and from storage through a few host buffers, so that
// reading and verifying (or hashing and writing) overlap with the copies and host memory stays
// within DeviceStaging::budget_bytes whatever the model size.
//
// A run walks a list of spans (one tensor's bytes each) in pieces of chunk_bytes(). ToDevice
// fills a free buffer through the caller's callback and queues its copy to the device; FromDevice
// queues copies ahead into every free buffer and hands each filled buffer, in order, to the
// caller. Spans that are not staged (host tensors in a save) are handed over in place, in the
// same order. A buffer is refilled only after the engine reported its last copy done. Used by one
// thread; a ring keeps its buffers for later runs.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "distckpt/copy_engine.h"
#include "distckpt/options.h"

namespace distckpt {

struct RingSpan {
  at::Tensor flat;                    // contiguous, 1-D: on the device when staged
  bool staged = true;                 // through a buffer and the engine; else read in place
  const std::string* name = nullptr;  // the tensor, for errors
};

// Fills `host` with elements [elem_begin, elem_begin + count) of span `span`.
using FillFn = std::function<Status(size_t span, int64_t elem_begin, int64_t count, void* host)>;
// Takes bytes [byte_begin, byte_begin + nbytes) of span `span`; `data` is valid during the call.
using ConsumeFn =
    std::function<Status(size_t span, int64_t byte_begin, const void* data, int64_t nbytes)>;

class StagingRing {
 public:
  // Pieces are multiples of `align_bytes` (a save's checksum piece, so that hashes of pieces
  // equal hashes of the whole), at least one per buffer even where that exceeds the budget.
  StagingRing(CopyEngine* engine, const DeviceStaging& options, int64_t align_bytes = 1);

  // Errors name the span's tensor; a deadline (MonotonicSeconds, 0: none) bounds every wait.
  Status ToDevice(const std::vector<RingSpan>& spans, const FillFn& fill, double deadline);
  Status FromDevice(const std::vector<RingSpan>& spans, const ConsumeFn& consume, double deadline);

  int64_t chunk_bytes() const { return chunk_bytes_; }
  int buffer_count() const { return static_cast<int>(buffers_.size()); }
  int64_t host_bytes() const;                               // host memory the buffers hold
  int64_t copies_queued() const { return copies_queued_; }  // in all runs so far

 private:
  struct Chunk {
    size_t span;
    int64_t elem_begin, count;
  };
  // Buffers for the staged chunks of a run: no more than they need, none without one.
  Status Reserve(const std::vector<RingSpan>& spans, const std::vector<Chunk>& chunks);
  std::vector<Chunk> ChunksOf(const std::vector<RingSpan>& spans) const;
  at::Tensor HostView(int ticket, const at::Tensor& like, int64_t count);
  Status Named(const Status& s, const RingSpan& span, const char* what) const;
  Status Drain(double deadline);

  CopyEngine* engine_;
  int64_t chunk_bytes_;
  int max_buffers_;
  std::vector<at::Tensor> buffers_;
  std::vector<bool> busy_;
  int64_t copies_queued_ = 0;
};

// The engine `staging` names, or else the built-in one (kept in *owned).
CopyEngine* EngineFor(const DeviceStaging& staging, std::unique_ptr<CopyEngine>* owned);

}  // namespace distckpt
