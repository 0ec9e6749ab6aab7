#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "comm/deadline_watch.h"
#include "comm/mpi_communicator.h"
#include "core/bytes.h"
#include "core/status_macros.h"
#include "distckpt/comm.h"

namespace distckpt {
namespace {

std::string ThisHost() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

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
  Status AllToAll(const std::vector<std::string_view>& to,
                  std::vector<std::string>* from) override {
    from->assign(1, std::string(to[0]));
    return Status::Ok();
  }
  Status AllReduceSum(double*, size_t) override { return Status::Ok(); }
  std::vector<std::string> hosts() const override { return {ThisHost()}; }
  std::string name() const override { return "local"; }
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm base) {
    MPI_Comm_dup(base, &comm_);
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
    std::vector<std::string> hosts;
    for (int r = 0; r < size_; ++r) hosts.emplace_back(names.data() + r * MPI_MAX_PROCESSOR_NAME);
    hosts_ = hosts;
    watch_ = std::make_unique<DeadlineWatch>(comm_, std::move(hosts));
  }
  ~MpiCommunicator() override {
    watch_.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int node_count() const override { return node_count_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::vector<std::string> hosts() const override { return hosts_; }
  void set_collective_timeout(double seconds) override { watch_->set_timeout(seconds); }
  double collective_timeout() const override { return watch_->timeout(); }
  Status Barrier() override {
    MPI_Request request;
    RETURN_IF_ERROR(Check(MPI_Ibarrier(comm_, &request), "barrier"));
    return watch_->Complete(&request, "barrier");
  }
  Status AllGather(const std::string& mine, std::vector<std::string>* all) override {
    std::vector<int> sizes, displs;
    RETURN_IF_ERROR(ShareSizes(mine, "all-gather", &sizes, &displs));
    std::string buffer(static_cast<size_t>(displs.back() + sizes.back()), '\0');
    MPI_Request request;
    RETURN_IF_ERROR(Check(MPI_Iallgatherv(mine.data(), sizes[rank_], MPI_BYTE, buffer.data(),
                                          sizes.data(), displs.data(), MPI_BYTE, comm_, &request),
                          "all-gather"));
    RETURN_IF_ERROR(watch_->Complete(&request, "all-gather"));
    all->resize(size_);
    for (int r = 0; r < size_; ++r) (*all)[r] = buffer.substr(displs[r], sizes[r]);
    return Status::Ok();
  }
  Status Gather(const std::string& mine, std::vector<std::string>* all, int root) override {
    std::vector<int> sizes, displs;
    RETURN_IF_ERROR(ShareSizes(mine, "gather", &sizes, &displs));
    std::string buffer(rank_ == root ? static_cast<size_t>(displs.back() + sizes.back()) : 0, '\0');
    MPI_Request request;
    RETURN_IF_ERROR(
        Check(MPI_Igatherv(mine.data(), sizes[rank_], MPI_BYTE, buffer.data(), sizes.data(),
                           displs.data(), MPI_BYTE, root, comm_, &request),
              "gather"));
    RETURN_IF_ERROR(watch_->Complete(&request, "gather"));
    all->clear();
    if (rank_ != root) return Status::Ok();
    all->resize(size_);
    for (int r = 0; r < size_; ++r) (*all)[r] = buffer.substr(displs[r], sizes[r]);
    return Status::Ok();
  }
  Status Broadcast(std::string* bytes, int root) override {
    int64_t n = static_cast<int64_t>(bytes->size());
    MPI_Request request;
    RETURN_IF_ERROR(
        Check(MPI_Ibcast(&n, 1, MPI_INT64_T, root, comm_, &request), "broadcast of size"));
    RETURN_IF_ERROR(watch_->Complete(&request, "broadcast of size"));
    if (n > INT32_MAX) return InvalidArgument("broadcast of more than 2 GiB");
    bytes->resize(static_cast<size_t>(n));
    RETURN_IF_ERROR(
        Check(MPI_Ibcast(bytes->data(), static_cast<int>(n), MPI_BYTE, root, comm_, &request),
              "broadcast"));
    return watch_->Complete(&request, "broadcast");
  }
  Status AllGatherInPlace(void* buffer, const std::vector<int64_t>& offsets,
                          const std::vector<int64_t>& sizes) override {
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
      MPI_Request request;
      RETURN_IF_ERROR(
          Check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base + low, counts.data(),
                                displs.data(), MPI_BYTE, comm_, &request),
                "exchange of tensor bytes"));
      RETURN_IF_ERROR(watch_->Complete(&request, "exchange of tensor bytes"));
    }
    return Status::Ok();
  }
  Status AllToAll(const std::vector<std::string_view>& to,
                  std::vector<std::string>* from) override {
    std::vector<int64_t> send_sizes(size_), recv_sizes(size_);
    for (int r = 0; r < size_; ++r) send_sizes[r] = static_cast<int64_t>(to[r].size());
    MPI_Request request;
    RETURN_IF_ERROR(Check(MPI_Ialltoall(send_sizes.data(), 1, MPI_INT64_T, recv_sizes.data(), 1,
                                        MPI_INT64_T, comm_, &request),
                          "all-to-all of sizes"));
    RETURN_IF_ERROR(watch_->Complete(&request, "all-to-all of sizes"));
    // The caller's strings keep their storage: a caller moving a file in pieces reuses it.
    from->resize(size_);
    for (int r = 0; r < size_; ++r) {
      (*from)[r].clear();
      (*from)[r].resize(static_cast<size_t>(recv_sizes[r]));
    }
    // Point to point between the pairs that move bytes, in pieces of at most 1 GiB (MPI's int
    // counts): a collective all-to-all moved large files between hosts at a fraction of this.
    constexpr int64_t kPiece = int64_t{1} << 30;
    constexpr int kTag = 7301;
    std::vector<MPI_Request> requests;
    for (int r = 0; r < size_; ++r) {
      for (int64_t off = 0; off < recv_sizes[r]; off += kPiece) {
        requests.emplace_back();
        RETURN_IF_ERROR(Check(MPI_Irecv((*from)[r].data() + off,
                                        static_cast<int>(std::min(kPiece, recv_sizes[r] - off)),
                                        MPI_BYTE, r, kTag, comm_, &requests.back()),
                              "all-to-all receive"));
      }
    }
    for (int r = 0; r < size_; ++r) {
      for (int64_t off = 0; off < send_sizes[r]; off += kPiece) {
        requests.emplace_back();
        RETURN_IF_ERROR(Check(MPI_Isend(const_cast<char*>(to[r].data()) + off,
                                        static_cast<int>(std::min(kPiece, send_sizes[r] - off)),
                                        MPI_BYTE, r, kTag, comm_, &requests.back()),
                              "all-to-all send"));
      }
    }
    for (MPI_Request& request : requests) {
      RETURN_IF_ERROR(watch_->Complete(&request, "all-to-all"));
    }
    return Status::Ok();
  }
  Status AllReduceSum(double* values, size_t count) override {
    MPI_Request request;
    RETURN_IF_ERROR(Check(MPI_Iallreduce(MPI_IN_PLACE, values, static_cast<int>(count), MPI_DOUBLE,
                                         MPI_SUM, comm_, &request),
                          "all-reduce"));
    return watch_->Complete(&request, "all-reduce");
  }
  std::string name() const override { return "mpi"; }

 private:
  // Every rank's byte count, shared with every rank, as MPI's int counts and displacements; a
  // collective that MPI cannot count (more than 2 GiB) is refused by every rank alike, naming
  // the rank, instead of by one while the others wait for it.
  Status ShareSizes(const std::string& mine, const std::string& what, std::vector<int>* sizes,
                    std::vector<int>* displs) {
    const int64_t my_size = static_cast<int64_t>(mine.size());
    std::vector<int64_t> all(size_);
    MPI_Request request;
    const std::string exchange = what + " of sizes";
    RETURN_IF_ERROR(
        Check(MPI_Iallgather(&my_size, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, comm_, &request),
              exchange.c_str()));
    RETURN_IF_ERROR(watch_->Complete(&request, exchange.c_str()));
    sizes->assign(size_, 0);
    displs->assign(size_, 0);
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      if (all[r] > INT32_MAX) {
        return InvalidArgument(what + " of " + std::to_string(all[r]) + " bytes from rank " +
                               std::to_string(r) + " (host " + hosts_[r] +
                               "): more than the 2 GiB one MPI call moves");
      }
      (*displs)[r] = static_cast<int>(total);
      (*sizes)[r] = static_cast<int>(all[r]);
      total += all[r];
    }
    if (total > INT32_MAX) {
      return InvalidArgument(what + " of " + std::to_string(total) +
                             " bytes in total: more than the 2 GiB one MPI call moves");
    }
    return Status::Ok();
  }

  Status Check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return Status::Ok();
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return Status(Code::kAborted, std::string("MPI ") + what + " failed on rank " +
                                      std::to_string(rank_) + ": " + std::string(text, len));
  }

  std::unique_ptr<DeadlineWatch> watch_;
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

std::unique_ptr<Communicator> MakeMpiCommunicator() {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
}

std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm base) {
  return std::make_unique<MpiCommunicator>(base);
}

std::unique_ptr<Communicator> MakeDefaultCommunicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return MakeMpiCommunicator();
  return MakeLocalCommunicator();
}

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
