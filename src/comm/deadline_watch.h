// DeadlineWatch: completes nonblocking MPI collectives within a deadline, and when one cannot
// complete, agrees with the other live ranks on which ranks are missing before ending the job.
//
// Every collective of MpiCommunicator is started as its nonblocking twin (MPI_Iallgather, ...)
// and handed to Complete(), which polls it. If it has not completed `timeout` seconds after this
// rank entered it, or another rank raises the alarm first, the incident protocol runs on a
// private duplicate of the communicator (point-to-point only, so it cannot be blocked by the
// stuck collective):
//   1. each rank in the incident sends WAITING to every other rank, once;
//   2. for a grace period it collects WAITING from the others (a rank polling any collective
//      joins the incident as soon as it sees the alarm, and answers);
//   3. the lowest rank that answered (the leader) names the ranks that did not answer, sends
//      that verdict to every rank, prints it, waits for acknowledgements and calls MPI_Abort;
//      the others print the leader's verdict (their own if the leader fell silent) and abort.
// A rank that answered was itself waiting inside a collective, so it is never blamed. A rank
// that is alive but busy outside any collective for longer than the grace period is named: it
// is the rank the others waited for. MPI cannot cancel a collective, so the job always ends.
// Used by one thread at a time (each communicator has its own watch).
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "distckpt/status.h"

namespace distckpt {

class DeadlineWatch {
 public:
  // `comm` is the communicator the collectives run on; the watch duplicates it for its alarms.
  // `hosts` names the host of every rank. Collective (duplicates the communicator).
  DeadlineWatch(MPI_Comm comm, std::vector<std::string> hosts);
  ~DeadlineWatch();
  DeadlineWatch(const DeadlineWatch&) = delete;
  DeadlineWatch& operator=(const DeadlineWatch&) = delete;

  // 0 or less: wait without a deadline.
  void set_timeout(double seconds) { timeout_ = seconds; }
  double timeout() const { return timeout_; }

  // Waits for `request` (a collective on `comm` named `what`). Returns MPI's error as a Status;
  // does not return when the deadline passes (the job is ended as described above).
  Status Complete(MPI_Request* request, const char* what);

  // How long the ranks collect answers before a verdict: a quarter of the deadline, 2 to 15 s.
  double GraceSeconds() const;

 private:
  struct Alarm {
    int from = -1;
    int64_t kind = 0;
    std::vector<int64_t> ranks;  // the verdict's missing ranks
  };
  bool Poll(Alarm* alarm);
  void Send(int to, int64_t kind, const std::vector<int64_t>& ranks);
  [[noreturn]] void Incident(const char* what);
  // Prints the verdict; the leader sends it to every rank and waits for `acks`, the others
  // acknowledge to `leader` (-1: none); then the job ends.
  [[noreturn]] void EndJob(const std::vector<int64_t>& missing, const char* what, int leader,
                           int acks);
  std::string Describe(const std::vector<int64_t>& ranks) const;
  Status Check(int rc, const char* what) const;

  MPI_Comm alarms_ = MPI_COMM_NULL;
  std::vector<std::string> hosts_;
  int rank_ = 0;
  int size_ = 1;
  double timeout_ = 0;
  int64_t sequence_ = 0;
};

}  // namespace distckpt
