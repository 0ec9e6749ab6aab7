#include "gpu/staging.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include "core/guarded.h"
#include "core/status_macros.h"

namespace distckpt {
namespace {

// Element sizes divide 16, so pieces of a multiple of 16 bytes hold whole elements.
constexpr int64_t kMaxElementBytes = 16;
// Smaller pieces would spend more on each copy's launch than on its bytes.
constexpr int64_t kMinChunkBytes = 64 << 10;

// The engine may throw (LibTorch reports CUDA errors as c10::Error).
template <typename Fn>
Status Call(Fn&& fn) {
  return Guarded("device copy", std::forward<Fn>(fn));
}

}  // namespace

StagingRing::StagingRing(CopyEngine* engine, const DeviceStaging& options, int64_t align_bytes)
    : engine_(engine) {
  int64_t unit = std::lcm(std::max<int64_t>(align_bytes, 1), kMaxElementBytes);
  unit *= (kMinChunkBytes + unit - 1) / unit;
  const int wanted = std::max(1, options.buffers);
  const int64_t per_buffer = std::max<int64_t>(options.budget_bytes, 0) / wanted;
  chunk_bytes_ = std::max(unit, per_buffer / unit * unit);
  max_buffers_ = static_cast<int>(
      std::clamp<int64_t>(options.budget_bytes / chunk_bytes_, 1, static_cast<int64_t>(wanted)));
}

int64_t StagingRing::host_bytes() const {
  int64_t total = 0;
  for (const at::Tensor& b : buffers_) total += static_cast<int64_t>(b.nbytes());
  return total;
}

Status StagingRing::Reserve(const std::vector<RingSpan>& spans, const std::vector<Chunk>& chunks) {
  int64_t staged = 0, largest = 0;
  for (const Chunk& c : chunks) {
    if (!spans[c.span].staged) continue;
    ++staged;
    largest = std::max(largest, c.count * static_cast<int64_t>(spans[c.span].flat.element_size()));
  }
  const int64_t count = std::min<int64_t>(staged, max_buffers_);
  if (static_cast<int64_t>(buffers_.size()) >= count &&
      (buffers_.empty() || static_cast<int64_t>(buffers_[0].nbytes()) >= largest)) {
    return Status::Ok();
  }
  buffers_.clear();
  busy_.clear();
  for (int64_t i = 0; i < count; ++i) {
    auto buffer = engine_->AllocateHost(largest);
    if (!buffer.ok()) {
      return buffer.status().Annotate("allocating " + std::to_string(largest) +
                                      " bytes of host staging memory");
    }
    buffers_.push_back(std::move(buffer).value());
    busy_.push_back(false);
  }
  return Status::Ok();
}

std::vector<StagingRing::Chunk> StagingRing::ChunksOf(const std::vector<RingSpan>& spans) const {
  std::vector<Chunk> chunks;
  for (size_t s = 0; s < spans.size(); ++s) {
    const int64_t numel = spans[s].flat.numel();
    const int64_t per_chunk = chunk_bytes_ / static_cast<int64_t>(spans[s].flat.element_size());
    for (int64_t b = 0; b < numel; b += per_chunk) {
      chunks.push_back({s, b, std::min(per_chunk, numel - b)});
    }
  }
  return chunks;
}

at::Tensor StagingRing::HostView(int ticket, const at::Tensor& like, int64_t count) {
  return buffers_[ticket]
      .narrow(0, 0, count * static_cast<int64_t>(like.element_size()))
      .view(like.scalar_type());
}

Status StagingRing::Named(const Status& s, const RingSpan& span, const char* what) const {
  if (s.ok()) return s;
  return s.Annotate("tensor '" + (span.name ? *span.name : std::string("?")) + "': " + what);
}

// Waits for every buffer still in flight (even after an error: the copies must not outlive
// the buffers), then closes the batch.
Status StagingRing::Drain(double deadline) {
  Status first;
  for (int t = 0; t < buffer_count(); ++t) {
    if (!busy_[t]) continue;
    Status s = Call([&] { return engine_->Wait(t, deadline); });
    busy_[t] = false;
    if (first.ok()) first = s;
  }
  Status finished = Call([&] { return engine_->Finish(deadline); });
  return first.ok() ? finished : first;
}

Status StagingRing::ToDevice(const std::vector<RingSpan>& spans, const FillFn& fill,
                             double deadline) {
  const std::vector<Chunk> chunks = ChunksOf(spans);
  RETURN_IF_ERROR(Reserve(spans, chunks));
  if (buffers_.empty()) return Status::Ok();
  RETURN_IF_ERROR(Call([&] { return engine_->Start(); }));
  Status status;
  int next = 0;
  for (const Chunk& c : chunks) {
    const RingSpan& span = spans[c.span];
    if (busy_[next]) {
      status = Named(Call([&] { return engine_->Wait(next, deadline); }), span,
                     "waiting for a copy to the device");
      busy_[next] = false;
      if (!status.ok()) break;
    }
    at::Tensor host = HostView(next, span.flat, c.count);
    status = fill(c.span, c.elem_begin, c.count, host.data_ptr());
    if (!status.ok()) break;
    status = Named(Call([&] {
                     return engine_->CopyToDevice(host, span.flat.narrow(0, c.elem_begin, c.count),
                                                  next);
                   }),
                   span, "copying to the device");
    if (!status.ok()) break;
    busy_[next] = true;
    ++copies_queued_;
    next = (next + 1) % buffer_count();
  }
  Status drained = Drain(deadline);
  return status.ok() ? drained : status;
}

Status StagingRing::FromDevice(const std::vector<RingSpan>& spans, const ConsumeFn& consume,
                               double deadline) {
  const std::vector<Chunk> chunks = ChunksOf(spans);
  RETURN_IF_ERROR(Reserve(spans, chunks));
  const bool staging = !buffers_.empty();
  if (staging) RETURN_IF_ERROR(Call([&] { return engine_->Start(); }));
  std::vector<int> ticket_of(chunks.size(), -1);
  size_t queued = 0;  // chunks [0, queued) are queued or in place
  int next = 0;
  Status status;
  // Queues copies of the chunks ahead into every free buffer; host chunks need none.
  auto fill_ahead = [&]() -> Status {
    for (; queued < chunks.size(); ++queued) {
      const Chunk& c = chunks[queued];
      const RingSpan& span = spans[c.span];
      if (!span.staged) continue;
      if (busy_[next]) break;
      at::Tensor host = HostView(next, span.flat, c.count);
      RETURN_IF_ERROR(Named(Call([&] {
                              return engine_->CopyToHost(span.flat.narrow(0, c.elem_begin, c.count),
                                                         host, next);
                            }),
                            span, "copying out its bytes"));
      busy_[next] = true;
      ++copies_queued_;
      ticket_of[queued] = next;
      next = (next + 1) % buffer_count();
    }
    return Status::Ok();
  };
  for (size_t i = 0; i < chunks.size() && status.ok(); ++i) {
    status = fill_ahead();
    if (!status.ok()) break;
    const Chunk& c = chunks[i];
    const RingSpan& span = spans[c.span];
    const int64_t esize = static_cast<int64_t>(span.flat.element_size());
    const char* data = nullptr;
    if (span.staged) {
      const int t = ticket_of[i];
      status = Named(Call([&] { return engine_->Wait(t, deadline); }), span,
                     "waiting for a copy of its bytes");
      busy_[t] = false;
      if (!status.ok()) break;
      data = static_cast<const char*>(buffers_[t].data_ptr());
    } else {
      data = static_cast<const char*>(span.flat.data_ptr()) + c.elem_begin * esize;
    }
    status = consume(c.span, c.elem_begin * esize, data, c.count * esize);
  }
  Status drained = staging ? Drain(deadline) : Status::Ok();
  return status.ok() ? drained : status;
}

CopyEngine* EngineFor(const DeviceStaging& staging, std::unique_ptr<CopyEngine>* owned) {
  if (staging.engine) return staging.engine;
  if (!*owned) *owned = MakeDeviceCopyEngine();
  return owned->get();
}

}  // namespace distckpt
