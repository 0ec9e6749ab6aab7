// Communicator: rank, size and the few collectives distckpt needs.
//
// The coordinator only moves small metadata and status votes through it; the demo trainer
// also reduces gradients with it. MakeMpiCommunicator() duplicates MPI_COMM_WORLD (MPI must be
// initialised by the caller) and sets MPI_ERRORS_RETURN on the duplicate, so MPI failures come
// back as a Status. MakeLocalCommunicator() is a world of one process with no MPI at all.
// A Communicator is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distckpt/status.h"

namespace distckpt {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Machines the ranks run on (shared-memory groups), and this rank's place on its machine;
  // one machine with one rank for a local world.
  virtual int node_count() const { return 1; }
  virtual int local_rank() const { return 0; }
  virtual int local_size() const { return 1; }
  // The host name of every rank, indexed by rank (as MPI_Get_processor_name reports it).
  virtual std::vector<std::string> hosts() const { return std::vector<std::string>(size(), ""); }
  virtual Status Barrier() = 0;
  // Every rank receives every rank's bytes, indexed by rank.
  virtual Status AllGather(const std::string& mine, std::vector<std::string>* all) = 0;
  // `root` receives every rank's bytes, indexed by rank; `all` is left empty elsewhere.
  virtual Status Gather(const std::string& mine, std::vector<std::string>* all, int root) = 0;
  // `bytes` on `root` is copied to every other rank.
  virtual Status Broadcast(std::string* bytes, int root) = 0;
  // Rank r's bytes are at buffer + offsets[r] (sizes[r] bytes, already filled on rank r);
  // afterwards every rank holds every segment. Moved in rounds of bounded size.
  virtual Status AllGatherInPlace(void* buffer, const std::vector<int64_t>& offsets,
                                  const std::vector<int64_t>& sizes) = 0;
  // Personalised exchange: `to[r]` goes to rank r (empty strings where nothing is sent); every
  // rank receives `from[r]` from each rank r. Moved in rounds of bounded size.
  virtual Status AllToAll(const std::vector<std::string_view>& to,
                          std::vector<std::string>* from) = 0;
  // Element-wise sum of `count` doubles across ranks, in place.
  virtual Status AllReduceSum(double* values, size_t count) = 0;
  virtual std::string name() const = 0;
  // A deadline on every collective (0: none). Each collective runs as nonblocking MPI polled
  // against the deadline; when one has not completed `seconds` after this rank entered it, the
  // ranks that are still alive agree (point to point, on a private duplicate communicator) on
  // which ranks never answered, every one of them prints that verdict (rank and host) on
  // stderr, and the job is ended with MPI_Abort: MPI cannot cancel a collective, and a stopped
  // rank would otherwise hold every other rank forever. docs/design.md has the protocol.
  virtual void set_collective_timeout(double seconds) { (void)seconds; }
  // The deadline set above (0: none); transports layered on this one (NCCL) wait no longer.
  virtual double collective_timeout() const { return 0; }
};

std::unique_ptr<Communicator> MakeLocalCommunicator();
std::unique_ptr<Communicator> MakeMpiCommunicator();
// MPI when MPI is initialised, otherwise the local world of one.
std::unique_ptr<Communicator> MakeDefaultCommunicator();

// Collective: every rank passes its own outcome and every rank gets the same answer: OK when
// all ranks succeeded, otherwise one Status naming each failed rank and its message. If the
// vote itself cannot be taken, the transport's error is returned.
Status AgreeOnStatus(Communicator& comm, const Status& local);

}  // namespace distckpt
