// LD_PRELOAD shim for fault tests: the process of MPI rank KILL_RANK dies by SIGKILL (stops with
// KILL_SIGNAL=STOP; blocks forever inside pwrite with KILL_SIGNAL=HANG) once it has written
// KILL_AFTER_BYTES bytes with pwrite into files whose path contains KILL_PATH_PART. With
// KILL_SIGNAL=HANG_FSYNC it instead blocks forever in the first fsync of such a file, as a
// stalled storage system would.
// Fault injection from outside: the programs under test carry no hooks.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long long written;

static void Hang(void) {
  for (;;) pause();
}

static int Armed(int fd) {
  const char* rank = getenv("OMPI_COMM_WORLD_RANK");
  const char* kill_rank = getenv("KILL_RANK");
  const char* part = getenv("KILL_PATH_PART");
  if (!rank || !kill_rank || !part || strcmp(rank, kill_rank) != 0) return 0;
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof(path) - 1);
  if (n <= 0) return 0;
  path[n] = '\0';
  return strstr(path, part) != NULL;
}

ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) {
  static ssize_t (*real)(int, const void*, size_t, off_t);
  if (!real) real = (ssize_t(*)(int, const void*, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
  if (Armed(fd)) {
    const char* after = getenv("KILL_AFTER_BYTES");
    long long budget = after ? atoll(after) : 4096;
    if (written + (long long)count >= budget) {
      if (budget > written) real(fd, buf, (size_t)(budget - written), offset);
      const char* sig = getenv("KILL_SIGNAL");
      if (sig && strcmp(sig, "HANG") == 0) Hang();
      if (!sig || strcmp(sig, "HANG_FSYNC") != 0) {
        raise(sig && strcmp(sig, "STOP") == 0 ? SIGSTOP : SIGKILL);
      }
    }
    written += (long long)count;
  }
  return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void* buf, size_t count, off_t offset) {
  return pwrite(fd, buf, count, offset);
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  const char* sig = getenv("KILL_SIGNAL");
  if (sig && strcmp(sig, "HANG_FSYNC") == 0 && Armed(fd)) Hang();
  return real(fd);
}
