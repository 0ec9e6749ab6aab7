// Shared by the benchmarks: wall time agreed across ranks, medians, page-cache eviction,
// peak resident memory.
#pragma once

#include <fcntl.h>
#include <mpi.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace distckpt::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs fn on every rank between barriers; returns the slowest rank's seconds.
template <typename Fn>
double TimeCollective(Fn&& fn) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = Now();
  fn();
  double dt = Now() - t0;
  MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return dt;
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Evicts a file's clean pages so the next read comes from storage (no root needed).
inline void EvictFromPageCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

inline void EvictTree(const std::string& dir) {
  std::error_code ec;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (e.is_regular_file()) EvictFromPageCache(e.path());
  }
}

// Resident memory now, and its peak since the last ResetPeakRss (Linux /proc/self/status).
inline double StatusMiB(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  double kib = -1;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') kib = std::atof(line + n + 1);
  }
  std::fclose(f);
  return kib / 1024.0;
}
inline double RssMiB() { return StatusMiB("VmRSS"); }
inline double HighWaterMiB() { return StatusMiB("VmHWM"); }
// Makes the peak start again from the current resident size; false where the kernel refuses.
inline bool ResetPeakRss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

inline double PeakRssMiB() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

}  // namespace distckpt::bench
