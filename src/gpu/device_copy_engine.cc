// The built-in CopyEngine, written against LibTorch's device-generic stream and event API, so
// that the core library copies CUDA tensors without linking CUDA itself: the CUDA runtime is
// reached through LibTorch's CUDA backend, which any process holding CUDA tensors has loaded.
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <map>
#include <set>
#include <thread>
#include <vector>

#include "core/guarded.h"
#include "core/status_macros.h"
#include "distckpt/copy_engine.h"

namespace distckpt {

Result<at::Tensor> CopyEngine::AllocateDevice(const at::Tensor& like, int64_t numel) {
  try {
    return at::empty({numel}, like.options());
  } catch (const c10::Error& e) {
    return Status(Code::kIoError,
                  std::string("cannot allocate device memory: ") + e.what_without_backtrace());
  }
}

namespace {

class AtenCopyEngine : public CopyEngine {
 public:
  bool Handles(const at::Tensor& tensor) const override {
    return tensor.defined() && tensor.is_cuda();
  }

  Result<at::Tensor> AllocateHost(int64_t bytes) override {
    try {
      return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    } catch (const c10::Error& e) {
      return Status(Code::kIoError, std::string("cannot allocate page-locked host memory: ") +
                                        e.what_without_backtrace());
    }
  }

  Status Start() override {
    ordered_.clear();
    return Status::Ok();
  }

  Status CopyToDevice(const at::Tensor& host, const at::Tensor& device, int ticket) override {
    return Copy(device, host, device.device(), ticket);
  }

  Status CopyToHost(const at::Tensor& device, const at::Tensor& host, int ticket) override {
    return Copy(host, device, device.device(), ticket);
  }

  Status Wait(int ticket, double deadline) override {
    auto it = pending_.find(ticket);
    if (it == pending_.end()) return Status::Ok();
    std::vector<c10::Event> events = std::move(it->second);
    pending_.erase(it);
    return Guarded("waiting for a device copy", [&] {
      for (const c10::Event& event : events) {
        // Polled rather than synchronized, so that a stalled device does not outlive the deadline.
        while (!event.query()) {
          if (deadline > 0 && MonotonicSeconds() > deadline) {
            return Status(Code::kAborted, "a device copy did not finish within the time limit");
          }
          std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
      }
      return Status::Ok();
    });
  }

  Status Finish(double deadline) override {
    std::vector<int> tickets;
    for (const auto& [ticket, events] : pending_) tickets.push_back(ticket);
    for (int ticket : tickets) RETURN_IF_ERROR(Wait(ticket, deadline));
    return Status::Ok();
  }

 private:
  // Queues dst.copy_(src) on the side stream of `device`, which first waits for the work queued
  // so far on the device's current stream.
  Status Copy(const at::Tensor& dst, const at::Tensor& src, c10::Device device, int ticket) {
    return Guarded("device copy", [&] {
      c10::impl::VirtualGuardImpl impl(device.type());
      auto side = side_.find(device.index());
      if (side == side_.end()) {
        side = side_.emplace(device.index(), impl.getStreamFromGlobalPool(device, false)).first;
      }
      if (ordered_.insert(device.index()).second) {
        c10::Event current_done(device.type());
        current_done.record(impl.getStream(device));
        current_done.block(side->second);
      }
      c10::StreamGuard on_side(side->second);
      dst.copy_(src, /*non_blocking=*/true);
      c10::Event done(device.type());
      done.record(side->second);
      pending_[ticket].push_back(std::move(done));
      return Status::Ok();
    });
  }

  std::map<c10::DeviceIndex, c10::Stream> side_;
  std::set<c10::DeviceIndex> ordered_;  // devices whose current stream the side stream waited for
  std::map<int, std::vector<c10::Event>> pending_;
};

}  // namespace

std::unique_ptr<CopyEngine> MakeDeviceCopyEngine() { return std::make_unique<AtenCopyEngine>(); }

}  // namespace distckpt
