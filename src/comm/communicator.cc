#include <mpi.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "core/bytes.h"
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
  Status Barrier() override { return Check(MPI_Barrier(comm_), "barrier"); }
  Status AllGather(const std::string& mine, std::vector<std::string>* all) override {
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
    int64_t n = static_cast<int64_t>(bytes->size());
    RETURN_IF_ERROR(Check(MPI_Bcast(&n, 1, MPI_INT64_T, root, comm_), "broadcast of size"));
    if (n > INT32_MAX) return InvalidArgument("broadcast of more than 2 GiB");
    bytes->resize(static_cast<size_t>(n));
    return Check(MPI_Bcast(bytes->data(), static_cast<int>(n), MPI_BYTE, root, comm_), "broadcast");
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
      RETURN_IF_ERROR(Check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base + low,
                                           counts.data(), displs.data(), MPI_BYTE, comm_),
                            "all-gather in place"));
    }
    return Status::Ok();
  }
  Status AllReduceSum(double* values, size_t count) override {
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

Status AgreeOnStatus(Communicator& comm, const Status& local) {
  ByteWriter w;
  w.PutI64(static_cast<int64_t>(local.code()));
  w.PutString(local.message());
  std::vector<std::string> all;
  RETURN_IF_ERROR(comm.AllGather(w.str(), &all));
  Code first_code = Code::kOk;
  std::string message;
  int failed = 0;
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    ByteReader reader(all[r]);
    int64_t code = 0;
    std::string text;
    if (!reader.GetI64(&code) || !reader.GetString(&text)) {
      return Internal("malformed status vote from rank " + std::to_string(r));
    }
    if (code == 0) continue;
    if (first_code == Code::kOk) first_code = static_cast<Code>(code);
    message += (failed++ ? "; " : "") + std::string("rank ") + std::to_string(r) + ": " + text;
  }
  if (failed == 0) return Status::Ok();
  return Status(first_code, message);
}

}  // namespace distckpt
