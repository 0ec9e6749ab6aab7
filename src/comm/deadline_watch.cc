#include "comm/deadline_watch.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/guarded.h"

namespace distckpt {
namespace {

constexpr int kAlarmTag = 7303;
enum AlarmKind : int64_t { kWaiting = 1, kVerdict = 2, kAck = 3 };

void Nap(int spins) {
  // Yield first (the cheapest wait on a machine with more ranks than cores), then sleep a little.
  if (spins < 1000) {
    sched_yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

}  // namespace

DeadlineWatch::DeadlineWatch(MPI_Comm comm, std::vector<std::string> hosts)
    : hosts_(std::move(hosts)) {
  MPI_Comm_dup(comm, &alarms_);
  MPI_Comm_set_errhandler(alarms_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(alarms_, &rank_);
  MPI_Comm_size(alarms_, &size_);
}

DeadlineWatch::~DeadlineWatch() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&alarms_);
}

double DeadlineWatch::GraceSeconds() const { return std::clamp(timeout_ / 4, 2.0, 15.0); }

Status DeadlineWatch::Check(int rc, const char* what) const {
  if (rc == MPI_SUCCESS) return Status::Ok();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return Status(Code::kAborted, std::string("MPI ") + what + " failed on rank " +
                                    std::to_string(rank_) + " (host " + hosts_[rank_] +
                                    "): " + std::string(text, len));
}

Status DeadlineWatch::Complete(MPI_Request* request, const char* what) {
  if (timeout_ <= 0 || size_ == 1) return Check(MPI_Wait(request, MPI_STATUS_IGNORE), what);
  ++sequence_;
  const double deadline = MonotonicSeconds() + timeout_;
  for (int spins = 0;; ++spins) {
    int done = 0;
    const int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return Check(rc, what);
    if (done) return Status::Ok();
    int alarm = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, kAlarmTag, alarms_, &alarm, MPI_STATUS_IGNORE);
    if (alarm) Incident(what);
    if (MonotonicSeconds() > deadline) Incident(what);
    Nap(spins);
  }
}

void DeadlineWatch::Send(int to, int64_t kind, const std::vector<int64_t>& ranks) {
  // Eager and never waited for: the receiver may be stopped or gone.
  auto* message = new std::vector<int64_t>{kind};
  message->insert(message->end(), ranks.begin(), ranks.end());
  MPI_Request request;
  if (MPI_Isend(message->data(), static_cast<int>(message->size()), MPI_INT64_T, to, kAlarmTag,
                alarms_, &request) == MPI_SUCCESS) {
    MPI_Request_free(&request);
  }
  // `message` stays allocated: the job ends with this incident, and MPI may still read it.
}

bool DeadlineWatch::Poll(Alarm* alarm) {
  int flag = 0;
  MPI_Status status;
  if (MPI_Iprobe(MPI_ANY_SOURCE, kAlarmTag, alarms_, &flag, &status) != MPI_SUCCESS || !flag) {
    return false;
  }
  int count = 0;
  MPI_Get_count(&status, MPI_INT64_T, &count);
  std::vector<int64_t> message(static_cast<size_t>(std::max(count, 1)), 0);
  MPI_Recv(message.data(), count, MPI_INT64_T, status.MPI_SOURCE, kAlarmTag, alarms_,
           MPI_STATUS_IGNORE);
  alarm->from = status.MPI_SOURCE;
  alarm->kind = message[0];
  alarm->ranks.assign(message.begin() + 1, message.end());
  return true;
}

void DeadlineWatch::Incident(const char* what) {
  std::vector<bool> answered(static_cast<size_t>(size_), false);
  answered[rank_] = true;
  for (int r = 0; r < size_; ++r) {
    if (r != rank_) Send(r, kWaiting, {});
  }
  // Collect answers for the grace period; a verdict that arrives meanwhile is final.
  Alarm alarm;
  auto collect_until = [&](double until) {
    for (int spins = 0; MonotonicSeconds() < until; ++spins) {
      while (Poll(&alarm)) {
        if (alarm.kind == kWaiting) answered[alarm.from] = true;
        if (alarm.kind == kVerdict) EndJob(alarm.ranks, what, alarm.from, 0);
      }
      Nap(spins);
    }
  };
  collect_until(MonotonicSeconds() + GraceSeconds());
  std::vector<int64_t> missing;
  for (int r = 0; r < size_; ++r) {
    if (!answered[r]) missing.push_back(r);
  }
  const int leader =
      static_cast<int>(std::find(answered.begin(), answered.end(), true) - answered.begin());
  if (leader == rank_) {
    EndJob(missing, what, rank_, static_cast<int>(size_ - missing.size()) - 1);
  }
  // The leader's verdict is the one every rank prints; without it, this rank's own.
  collect_until(MonotonicSeconds() + GraceSeconds());
  EndJob(missing, what, /*leader=*/-1, 0);
}

std::string DeadlineWatch::Describe(const std::vector<int64_t>& ranks) const {
  std::string text;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const int r = static_cast<int>(ranks[i]);
    const std::string host = r >= 0 && r < size_ ? hosts_[r] : "?";
    text += (i ? ", " : "") + std::string("rank ") + std::to_string(r) + " (host " + host + ")";
  }
  return text;
}

void DeadlineWatch::EndJob(const std::vector<int64_t>& missing, const char* what, int leader,
                           int acks) {
  char seconds[32];
  std::snprintf(seconds, sizeof(seconds), "%g", timeout_);
  if (missing.empty()) {
    std::fprintf(stderr,
                 "distckpt: rank %d (host %s): the %s did not complete within %s s although "
                 "every rank was waiting in a collective (a transfer slower than the deadline, "
                 "or ranks in different collectives); ending the job (nothing of this step is "
                 "committed)\n",
                 rank_, hosts_[rank_].c_str(), what, seconds);
  } else {
    std::fprintf(stderr,
                 "distckpt: rank %d (host %s): %s did not arrive at the next collective step "
                 "(%s) within %s s; ending the job (nothing of this step is committed)\n",
                 rank_, hosts_[rank_].c_str(), Describe(missing).c_str(), what, seconds);
  }
  std::fflush(stderr);
  if (leader == rank_) {
    for (int r = 0; r < size_; ++r) {
      if (r != rank_) Send(r, kVerdict, missing);
    }
    // Give the ranks that answered a moment to print the same verdict before the job ends.
    Alarm alarm;
    const double until = MonotonicSeconds() + 3;
    for (int spins = 0; acks > 0 && MonotonicSeconds() < until; ++spins) {
      while (Poll(&alarm)) acks -= alarm.kind == kAck ? 1 : 0;
      Nap(spins);
    }
  } else {
    if (leader >= 0) Send(leader, kAck, {});
    // The leader ends the job; if it cannot, this rank does.
    std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  MPI_Abort(alarms_, 3);
  std::abort();
}

}  // namespace distckpt
