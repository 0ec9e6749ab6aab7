#include "torch_communicator.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace py = pybind11;
using distckpt::Status;

namespace distckpt_python {
namespace {

class TorchCommunicator : public distckpt::Communicator {
 public:
  explicit TorchCommunicator(py::object comm) : comm_(std::move(comm)) {
    rank_ = comm_.attr("rank").cast<int>();
    size_ = comm_.attr("size").cast<int>();
    hosts_ = comm_.attr("hosts").cast<std::vector<std::string>>();
    name_ = comm_.attr("backend").cast<std::string>();
    group_timeout_ = comm_.attr("timeout").cast<double>();
    std::map<std::string, int> per_host;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) local_rank_ = per_host[hosts_[r]];
      ++per_host[hosts_[r]];
    }
    node_count_ = static_cast<int>(per_host.size());
    local_size_ = per_host[hosts_[rank_]];
  }
  ~TorchCommunicator() override {
    py::gil_scoped_acquire locked;  // the Python object goes with the GIL held
    comm_ = py::object();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int node_count() const override { return node_count_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::vector<std::string> hosts() const override { return hosts_; }
  std::string name() const override { return name_; }
  // The deadline is the gloo group's, fixed when the group was made from the same Checkpointer
  // timeout that the engine sets here.
  void set_collective_timeout(double) override {}
  double collective_timeout() const override { return group_timeout_; }

  Status Barrier() override {
    return Call("barrier", [&] { comm_.attr("barrier")(); });
  }
  Status AllGather(const std::string& mine, std::vector<std::string>* all) override {
    return Call("all-gather", [&] {
      *all = comm_.attr("all_gather")(py::bytes(mine)).cast<std::vector<std::string>>();
    });
  }
  Status Gather(const std::string& mine, std::vector<std::string>* all, int root) override {
    return Call("gather", [&] {
      *all = comm_.attr("gather")(py::bytes(mine), root).cast<std::vector<std::string>>();
    });
  }
  Status Broadcast(std::string* bytes, int root) override {
    return Call("broadcast", [&] {
      *bytes = comm_.attr("broadcast")(py::bytes(*bytes), root).cast<std::string>();
    });
  }
  Status AllGatherInPlace(void* buffer, const std::vector<int64_t>& offsets,
                          const std::vector<int64_t>& sizes) override {
    char* base = static_cast<char*>(buffer);
    std::vector<std::string> all;
    Status st = AllGather(std::string(base + offsets[rank_], sizes[rank_]), &all);
    if (!st.ok()) return st;
    for (int r = 0; r < size_; ++r) {
      if (r != rank_) std::memcpy(base + offsets[r], all[r].data(), all[r].size());
    }
    return Status::Ok();
  }
  Status AllToAll(const std::vector<std::string_view>& to,
                  std::vector<std::string>* from) override {
    return Call("all-to-all", [&] {
      py::list pieces;
      for (std::string_view piece : to) pieces.append(py::bytes(piece.data(), piece.size()));
      *from = comm_.attr("all_to_all")(pieces).cast<std::vector<std::string>>();
    });
  }
  Status AllReduceSum(double* values, size_t count) override {
    return Call("all-reduce", [&] {
      std::vector<double> in(values, values + count);
      auto out = comm_.attr("all_reduce_sum")(in).cast<std::vector<double>>();
      std::copy(out.begin(), out.end(), values);
    });
  }

 private:
  // Runs `body` with the GIL; a Python exception becomes a Status naming rank, host and call.
  template <typename Body>
  Status Call(const char* what, Body&& body) {
    py::gil_scoped_acquire locked;
    try {
      body();
      return Status::Ok();
    } catch (py::error_already_set& e) {
      std::string message = e.what();
      const size_t source = message.find("] ");  // gloo prefixes its source file and line
      if (message.rfind("RuntimeError: [", 0) == 0 && source != std::string::npos) {
        message = message.substr(source + 2);
      }
      message = message.substr(0, message.find('\n'));
      std::string head = "rank " + std::to_string(rank_) + " (host " + hosts_[rank_] +
                         "): " + what + " over " + name_;
      if (message.find("Timed out") != std::string::npos) {
        char seconds[32];
        std::snprintf(seconds, sizeof(seconds), "%g", group_timeout_);
        const std::string late = Laggards();
        head += " did not complete within " + std::string(seconds) +
                " s (the checkpointer's timeout): " +
                (late.empty() ? "another rank stopped, died or never arrived"
                              : late + " did not arrive (stopped, died or hung)");
      } else {
        head += " failed";
      }
      return Status(distckpt::Code::kAborted, head + " (" + message + ")");
    }
  }

  // "rank 1 (host h2), rank 3 (host h4)": the ranks the store says never reached this rank's
  // collective; "" when it cannot tell. Called with the GIL held.
  std::string Laggards() {
    std::string text;
    try {
      for (int r : comm_.attr("laggards")().cast<std::vector<int>>()) {
        if (r < 0 || r >= size_) continue;
        text += (text.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r) + " (host " +
                hosts_[r] + ")";
      }
    } catch (py::error_already_set&) {
      return "";
    }
    return text;
  }

  py::object comm_;
  int rank_ = 0, size_ = 1, node_count_ = 1, local_rank_ = 0, local_size_ = 1;
  std::vector<std::string> hosts_;
  std::string name_;
  double group_timeout_ = 0;
};

}  // namespace

std::unique_ptr<distckpt::Communicator> MakeTorchCommunicator(py::object torch_comm) {
  return std::make_unique<TorchCommunicator>(std::move(torch_comm));
}

}  // namespace distckpt_python
