#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "core/bytes.h"
#include "core/guarded.h"
#include "distckpt/comm.h"

namespace distckpt {
namespace {

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Status Barrier() override { return Status::Ok(); }
  Status AllGather(const std::string& mine, std::vector<std::string>* all) override {
    all->assign(1, mine);
    return Status::Ok();
  }
  Status Gather(const std::string& mine, std::vector<std::string>* all, int) override {
    all->assign(1, mine);
    return Status::Ok();
  }
  Status Broadcast(std::string*, int) override { return Status::Ok(); }
  Status AllGatherInPlace(void*, const std::vector<int64_t>&,
                          const std::vector<int64_t>&) override {
    return Status::Ok();
  }
  Status AllReduceSum(double*, size_t) override { return Status::Ok(); }
  std::string name() const override { return "local"; }
};

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator() {
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // Nodes = ranks that are rank 0 of their shared-memory group.
    MPI_Comm node;
    int leaders = 1;
    if (MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
      MPI_Comm_rank(node, &local_rank_);
      MPI_Comm_size(node, &local_size_);
      MPI_Comm_free(&node);
      int leader = local_rank_ == 0 ? 1 : 0;
      MPI_Allreduce(&leader, &leaders, 1, MPI_INT, MPI_SUM, comm_);
    }
    node_count_ = std::max(1, leaders);
    char name[MPI_MAX_PROCESSOR_NAME] = {};
    int length = 0;
    MPI_Get_processor_name(name, &length);
    std::vector<char> names(static_cast<size_t>(size_) * MPI_MAX_PROCESSOR_NAME);
    MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names.data(), MPI_MAX_PROCESSOR_NAME,
                  MPI_CHAR, comm_);
    for (int r = 0; r < size_; ++r) hosts_.emplace_back(names.data() + r * MPI_MAX_PROCESSOR_NAME);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int node_count() const override { return node_count_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  void set_collective_timeout(double seconds) override { timeout_ = seconds; }
  Status Barrier() override {
    Arrive("barrier");
    return Check(MPI_Barrier(comm_), "barrier");
  }
  Status AllGather(const std::string& mine, std::vector<std::string>* all) override {
    Arrive("all-gather");
    if (mine.size() > static_cast<size_t>(INT32_MAX)) {
      return InvalidArgument("all-gather of more than 2 GiB from one rank");
    }
    int my_size = static_cast<int>(mine.size());
    std::vector<int> sizes(size_), displs(size_);
    RETURN_IF_ERROR(Check(MPI_Allgather(&my_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, comm_),
                          "all-gather of sizes"));
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(total);
      total += sizes[r];
    }
    if (total > INT32_MAX) return InvalidArgument("all-gather of more than 2 GiB in total");
    std::string buffer(static_cast<size_t>(total), '\0');
    RETURN_IF_ERROR(Check(MPI_Allgatherv(mine.data(), my_size, MPI_BYTE, buffer.data(),
                                         sizes.data(), displs.data(), MPI_BYTE, comm_),
                          "all-gather"));
    all->resize(size_);
    for (int r = 0; r < size_; ++r) (*all)[r] = buffer.substr(displs[r], sizes[r]);
    return Status::Ok();
  }
  Status Gather(const std::string& mine, std::vector<std::string>* all, int root) override {
    Arrive("gather");
    if (mine.size() > static_cast<size_t>(INT32_MAX)) {
      return InvalidArgument("gather of more than 2 GiB from one rank");
    }
    int my_size = static_cast<int>(mine.size());
    std::vector<int> sizes(size_), displs(size_);
    RETURN_IF_ERROR(Check(MPI_Gather(&my_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, root, comm_),
                          "gather of sizes"));
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(total);
      total += sizes[r];
    }
    if (rank_ == root && total > INT32_MAX) {
      return InvalidArgument("gather of more than 2 GiB in total");
    }
    std::string buffer(rank_ == root ? static_cast<size_t>(total) : 0, '\0');
    RETURN_IF_ERROR(Check(MPI_Gatherv(mine.data(), my_size, MPI_BYTE, buffer.data(), sizes.data(),
                                      displs.data(), MPI_BYTE, root, comm_),
                          "gather"));
    all->clear();
    if (rank_ != root) return Status::Ok();
    all->resize(size_);
    for (int r = 0; r < size_; ++r) (*all)[r] = buffer.substr(displs[r], sizes[r]);
    return Status::Ok();
  }
  Status Broadcast(std::string* bytes, int root) override {
    Arrive("broadcast");
    int64_t n = static_cast<int64_t>(bytes->size());
    RETURN_IF_ERROR(Check(MPI_Bcast(&n, 1, MPI_INT64_T, root, comm_), "broadcast of size"));
    if (n > INT32_MAX) return InvalidArgument("broadcast of more than 2 GiB");
    bytes->resize(static_cast<size_t>(n));
    return Check(MPI_Bcast(bytes->data(), static_cast<int>(n), MPI_BYTE, root, comm_), "broadcast");
  }
  Status AllGatherInPlace(void* buffer, const std::vector<int64_t>& offsets,
                          const std::vector<int64_t>& sizes) override {
    Arrive("exchange of tensor bytes");
    // Rounds of at most kRound bytes per rank keep MPI's int counts in range.
    constexpr int64_t kRound = 256 << 20;
    int64_t longest = 0;
    for (int64_t s : sizes) longest = std::max(longest, s);
    std::vector<int> counts(size_), displs(size_);
    char* base = static_cast<char*>(buffer);
    for (int64_t done = 0; done < longest; done += kRound) {
      // Displacements are relative to `base`; each must fit an int, so shift the base.
      int64_t low = INT64_MAX;
      for (int r = 0; r < size_; ++r) low = std::min(low, offsets[r] + std::min(done, sizes[r]));
      for (int r = 0; r < size_; ++r) {
        const int64_t from = std::min(done, sizes[r]);
        counts[r] = static_cast<int>(std::min(kRound, sizes[r] - from));
        const int64_t displ = offsets[r] + from - low;
        if (displ > INT32_MAX) return InvalidArgument("all-gather segments too far apart");
        displs[r] = static_cast<int>(displ);
      }
      RETURN_IF_ERROR(Check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base + low,
                                           counts.data(), displs.data(), MPI_BYTE, comm_),
                            "all-gather in place"));
    }
    return Status::Ok();
  }
  Status AllReduceSum(double* values, size_t count) override {
    Arrive("all-reduce");
    return Check(
        MPI_Allreduce(MPI_IN_PLACE, values, static_cast<int>(count), MPI_DOUBLE, MPI_SUM, comm_),
        "all-reduce");
  }
  std::string name() const override { return "mpi"; }

 private:
  Status Check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return Status::Ok();
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return Status(Code::kAborted, std::string("MPI ") + what + " failed on rank " +
                                      std::to_string(rank_) + ": " + std::string(text, len));
  }

  // The arrival check before a collective (see Communicator::set_collective_timeout).
  void Arrive(const char* what) {
    if (timeout_ <= 0 || size_ == 1) return;
    const double deadline = MonotonicSeconds() + timeout_;
    std::vector<int64_t> verdict(static_cast<size_t>(size_) + 1, 0);  // count, missing ranks
    if (rank_ == 0) {
      CollectArrivals(deadline, &verdict);
    } else {
      int64_t arrived = ++sequence_;
      MPI_Send(&arrived, 1, MPI_INT64_T, 0, kArriveTag, comm_);
      MPI_Request request;
      MPI_Irecv(verdict.data(), size_ + 1, MPI_INT64_T, 0, kVerdictTag, comm_, &request);
      // Rank 0 gives its verdict at the deadline; wait a little longer for it.
      if (!WaitFor(&request, deadline + std::max(5.0, timeout_ / 10))) verdict = {1, 0};
    }
    if (verdict[0] > 0) EndJob(verdict, what);
  }

  void CollectArrivals(double deadline, std::vector<int64_t>* verdict) {
    ++sequence_;
    std::vector<int64_t> arrived(static_cast<size_t>(size_));
    std::vector<MPI_Request> requests(static_cast<size_t>(size_), MPI_REQUEST_NULL);
    for (int r = 1; r < size_; ++r) {
      MPI_Irecv(&arrived[r], 1, MPI_INT64_T, r, kArriveTag, comm_, &requests[r]);
    }
    for (int r = 1; r < size_; ++r) {
      if (!WaitFor(&requests[r], deadline)) (*verdict)[1 + (*verdict)[0]++] = r;
    }
    for (int r = 1; r < size_; ++r) {
      MPI_Send(verdict->data(), size_ + 1, MPI_INT64_T, r, kVerdictTag, comm_);
    }
  }

  // Polls `request` until it completes (true) or `deadline` passes (false).
  static bool WaitFor(MPI_Request* request, double deadline) {
    for (int done = 0;;) {
      MPI_Test(request, &done, MPI_STATUS_IGNORE);
      if (done) return true;
      if (MonotonicSeconds() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  [[noreturn]] void EndJob(const std::vector<int64_t>& verdict, const char* what) {
    std::string ranks;
    for (int64_t i = 1; i <= verdict[0]; ++i) {
      const int r = static_cast<int>(verdict[i]);
      ranks += (i > 1 ? ", " : "") + std::string("rank ") + std::to_string(r) + " (host " +
               hosts_[r] + ")";
    }
    char seconds[32];
    std::snprintf(seconds, sizeof(seconds), "%g", timeout_);
    std::fprintf(stderr,
                 "distckpt: rank %d (host %s): %s did not arrive at the next collective step "
                 "(%s) within %s s; ending the job (nothing of this step is committed)\n",
                 rank_, hosts_[rank_].c_str(), ranks.c_str(), what, seconds);
    std::fflush(stderr);
    MPI_Abort(comm_, 3);
    std::abort();
  }

  static constexpr int kArriveTag = 7301;
  static constexpr int kVerdictTag = 7302;
  double timeout_ = 0;
  int64_t sequence_ = 0;
  std::vector<std::string> hosts_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int node_count_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> MakeLocalCommunicator() {
  return std::make_unique<LocalCommunicator>();
}

std::unique_ptr<Communicator> MakeMpiCommunicator() { return std::make_unique<MpiCommunicator>(); }

std::unique_ptr<Communicator> MakeDefaultCommunicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return MakeMpiCommunicator();
  return MakeLocalCommunicator();
}

namespace {
std::string ThisHost() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}
}  // namespace

// Each failed rank's message is prefixed with the rank and its host: "rank 2 (host n7): ...".
Status AgreeOnStatus(Communicator& comm, const Status& local) {
  ByteWriter w;
  w.PutI64(static_cast<int64_t>(local.code()));
  w.PutString(local.ok() ? std::string() : ThisHost());
  w.PutString(local.message());
  std::vector<std::string> all;
  RETURN_IF_ERROR(comm.AllGather(w.str(), &all));
  Code first_code = Code::kOk;
  std::string message;
  int failed = 0;
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    ByteReader reader(all[r]);
    int64_t code = 0;
    std::string host, text;
    if (!reader.GetI64(&code) || !reader.GetString(&host) || !reader.GetString(&text)) {
      return Internal("malformed status vote from rank " + std::to_string(r));
    }
    if (code == 0) continue;
    if (first_code == Code::kOk) first_code = static_cast<Code>(code);
    message += (failed++ ? "; " : "") + std::string("rank ") + std::to_string(r) + " (host " +
               host + "): " + text;
  }
  if (failed == 0) return Status::Ok();
  return Status(first_code, message);
}

}  // namespace distckpt
