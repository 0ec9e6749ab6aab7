// A CopyEngine for machines without a GPU: "device" tensors are ordinary CPU tensors made by
// NewTensor, and copies run later on a worker thread, as a GPU's copy engine would. It checks the
// staging ring's side of the contract as it goes:
//   - no copy outside Start/Finish, no buffer refilled before Wait on its ticket;
//   - a host buffer does not change while its copy to the device runs;
//   - a copy to the host lands only when it completes (the buffer reads 0xAB before that), so a
//     reader that does not wait sees wrong bytes;
//   - host memory allocated stays counted (allocated_bytes) against the caller's budget.
// Faults: fail the k-th copy call, fail the k-th wait, or never complete the k-th copy.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/checksum.h"
#include "core/guarded.h"
#include "core/status_macros.h"
#include "distckpt/copy_engine.h"

namespace distckpt::testing {

class FakeDevice : public CopyEngine {
 public:
  FakeDevice() : worker_([this] { Run(); }) {}
  ~FakeDevice() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  // A tensor that lives on the fake device.
  at::Tensor NewTensor(const at::Tensor& contents) {
    at::Tensor t = contents.clone();
    std::lock_guard<std::mutex> lock(mu_);
    device_storage_.insert(t.storage().data());
    return t;
  }

  int fail_copy_at = -1;  // the k-th copy call (0-based) returns an error
  int fail_wait_at = -1;  // the k-th wait returns an error
  int hang_at = -1;       // the k-th copy never completes
  bool fail_allocate = false;
  std::function<void()> before_first_copy;  // runs once, as the first copy is queued
  std::chrono::microseconds delay{200};     // how long each copy takes
  bool check_host_buffers = true;           // hash host buffers around copies to the device

  // What the ring did.
  int64_t allocated_bytes = 0;
  int copies = 0, waits = 0, starts = 0, finishes = 0;
  int max_in_flight = 0;                // copies queued and not yet waited for, at most
  std::vector<std::string> violations;  // seen by the calling thread

  // Every breach of the contract seen so far, by either thread.
  std::vector<std::string> Violations() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> all = violations;
    all.insert(all.end(), worker_violations_.begin(), worker_violations_.end());
    return all;
  }

  bool Handles(const at::Tensor& tensor) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return tensor.defined() && device_storage_.count(tensor.storage().data()) > 0;
  }

  Result<at::Tensor> AllocateHost(int64_t bytes) override {
    if (fail_allocate) return IoError("cannot allocate page-locked memory: injected fault");
    allocated_bytes += bytes;
    return at::empty({bytes}, at::kByte);
  }

  Result<at::Tensor> AllocateDevice(const at::Tensor& like, int64_t numel) override {
    return NewTensor(at::empty({numel}, like.options()));
  }

  Status Start() override {
    if (in_batch_) violations.push_back("Start inside a batch");
    in_batch_ = true;
    ++starts;
    return Status::Ok();
  }

  Status CopyToDevice(const at::Tensor& host, const at::Tensor& device, int ticket) override {
    if (!Handles(device)) {
      violations.push_back("CopyToDevice into a tensor not on the device (" +
                           std::to_string(device.numel()) + " elements)");
    }
    return Queue(host, device, ticket, /*to_device=*/true);
  }

  Status CopyToHost(const at::Tensor& device, const at::Tensor& host, int ticket) override {
    if (!Handles(device)) violations.push_back("CopyToHost from a tensor not on the device");
    return Queue(device, host, ticket, /*to_device=*/false);
  }

  Status Wait(int ticket, double deadline) override {
    const int index = waits++;
    std::unique_lock<std::mutex> lock(mu_);
    auto done = [&] { return outstanding_[ticket] == 0; };
    while (!done()) {
      if (deadline > 0 && MonotonicSeconds() > deadline) {
        return Status(Code::kAborted, "a device copy did not finish within the time limit");
      }
      cv_.wait_for(lock, std::chrono::milliseconds(5));
    }
    in_flight_ -= waited_[ticket];
    waited_[ticket] = 0;
    unwaited_hosts_.erase(ticket);
    if (index == fail_wait_at) return Status(Code::kAborted, "injected fault: illegal address");
    return Status::Ok();
  }

  Status Finish(double deadline) override {
    if (!in_batch_) violations.push_back("Finish outside a batch");
    in_batch_ = false;
    ++finishes;
    for (auto& [ticket, count] : std::map<int, int>(waited_)) {
      if (count > 0) RETURN_IF_ERROR(Wait(ticket, deadline));
    }
    return Status::Ok();
  }

 private:
  struct Op {
    char* dst;
    const char* src;
    size_t bytes;
    int ticket;
    bool to_device, hang;
    uint64_t host_hash;  // of the host bytes when a copy to the device was queued
  };

  Status Queue(const at::Tensor& src, const at::Tensor& dst, int ticket, bool to_device) {
    const int index = copies++;
    if (index == 0 && before_first_copy) before_first_copy();
    if (!in_batch_) violations.push_back("copy outside Start/Finish");
    if (src.nbytes() != dst.nbytes() || !src.is_contiguous() || !dst.is_contiguous()) {
      violations.push_back("copy between tensors of different sizes or not contiguous");
    }
    if (index == fail_copy_at) return Status(Code::kAborted, "injected fault: copy refused");
    std::lock_guard<std::mutex> lock(mu_);
    const at::Tensor& host = to_device ? src : dst;
    const char* begin = static_cast<const char*>(host.data_ptr());
    for (const auto& [t, ranges] : unwaited_hosts_) {
      for (const auto& [b, e] : ranges) {
        if (begin < e && b < begin + host.nbytes()) {
          violations.push_back("host buffer of ticket " + std::to_string(t) +
                               " reused before Wait");
        }
      }
    }
    unwaited_hosts_[ticket].emplace_back(begin, begin + host.nbytes());
    Op op{static_cast<char*>(dst.data_ptr()),
          static_cast<const char*>(src.data_ptr()),
          dst.nbytes(),
          ticket,
          to_device,
          index == hang_at,
          to_device && check_host_buffers ? HashBytes(host.data_ptr(), host.nbytes()) : 0};
    if (!to_device) std::memset(op.dst, 0xAB, op.bytes);  // not there until the copy completes
    ops_.push_back(op);
    ++outstanding_[ticket];
    ++waited_[ticket];
    max_in_flight = std::max(max_in_flight, ++in_flight_);
    cv_.notify_all();
    return Status::Ok();
  }

  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || (!ops_.empty() && !ops_.front().hang); });
      if (stop_) return;
      Op op = ops_.front();
      ops_.pop_front();
      lock.unlock();
      if (delay.count() > 0) std::this_thread::sleep_for(delay);
      if (op.to_device && check_host_buffers && HashBytes(op.src, op.bytes) != op.host_hash) {
        std::lock_guard<std::mutex> relock(mu_);
        worker_violations_.push_back("host buffer changed while its copy to the device ran");
      }
      std::memcpy(op.dst, op.src, op.bytes);
      lock.lock();
      --outstanding_[op.ticket];
      cv_.notify_all();
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<const void*> device_storage_;
  std::vector<std::string> worker_violations_;
  std::deque<Op> ops_;
  std::map<int, int> outstanding_;  // per ticket: queued, not yet completed
  std::map<int, int> waited_;       // per ticket: queued, not yet waited for
  std::map<int, std::vector<std::pair<const char*, const char*>>> unwaited_hosts_;
  int in_flight_ = 0;
  bool in_batch_ = false;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace distckpt::testing
