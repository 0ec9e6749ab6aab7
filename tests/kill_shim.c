// LD_PRELOAD shim for fault tests: the process of MPI rank KILL_RANK is struck once it has written
// KILL_AFTER_BYTES bytes with pwrite into files whose path contains KILL_PATH_PART (with
// KILL_ON_OPEN=1: as soon as it opens such a file, e.g. to load it; KILL_ON_OPEN=read: as soon as
// it opens one for reading only). KILL_SIGNAL says how:
//   KILL (default)  dies by SIGKILL
//   STOP            stops (SIGSTOP), as a process the scheduler no longer runs
//   HANG            blocks forever inside that call, as on a stalled file system
//   HANG_FSYNC      writes on, then blocks forever in the first fsync of such a file
//   PAUSE           sleeps KILL_PAUSE_SECONDS (default 3) and goes on, leaving the test time
//                   to strike from outside (cut the host's link, kill the host)
//   FAIL            that call fails with errno KILL_ERRNO (EIO by default; ENOSPC: a full
//                   disk, after writing what was left of KILL_AFTER_BYTES) and the rank goes on
// KILL_PATH_PART is a substring of the path, or a glob pattern where it holds a '*' ('*' also
// matches '/': "*/.tmp-step-00000004-*/rank-00002.h5" is that file of step 4 alone).
// With KILL_AT_CALL=N the shim strikes instead before the N-th file call (open, pread, pwrite,
// fsync, rename) that touches such a path, and KILL_COUNT_FILE, when set, receives at exit how
// many such calls the rank made: a sweep counts once, then strikes at points spread over them.
// With KILL_MARK set, the file KILL_MARK is created when the shim strikes, so that a test can
// act at that moment. Fault injection from outside: the programs under test carry no hooks.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static long long written;
static long long calls;
static int struck;
static int failing;  // FAIL: the call that struck is to fail

static int Is(const char* name, const char* value) {
  const char* v = getenv(name);
  return v && strcmp(v, value) == 0;
}

static int IsVictim(void) {
  const char* rank = getenv("OMPI_COMM_WORLD_RANK");
  const char* kill_rank = getenv("KILL_RANK");
  return rank && kill_rank && strcmp(rank, kill_rank) == 0;
}

static int ArmedPath(const char* path) {
  const char* part = getenv("KILL_PATH_PART");
  if (!IsVictim() || !part) return 0;
  return strchr(part, '*') ? fnmatch(part, path, 0) == 0 : strstr(path, part) != NULL;
}

// The path of `fd` into `path` (PATH_MAX bytes); 0 if unknown.
static int FdPath(int fd, char* path) {
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, PATH_MAX - 1);
  if (n <= 0) return 0;
  path[n] = '\0';
  return 1;
}

static int Armed(int fd) {
  char path[PATH_MAX];
  return FdPath(fd, path) && ArmedPath(path);
}

// What the shim struck at ("rename /path"), written into KILL_MARK.
static char struck_at[PATH_MAX + 32];

static void Mark(void) {
  const char* mark = getenv("KILL_MARK");
  if (!mark) return;
  static int (*real_open)(const char*, int, ...);
  if (!real_open) real_open = (int (*)(const char*, int, ...))dlsym(RTLD_NEXT, "open");
  int fd = real_open(mark, O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) return;
  size_t n = strlen(struck_at);
  if (n && write(fd, struck_at, n) != (ssize_t)n) {
  }
  close(fd);
}

// Strikes once; returns so that the call goes on (PAUSE, or HANG_FSYNC before its fsync).
static void Strike(void) {
  if (struck) return;
  struck = 1;
  Mark();
  if (Is("KILL_SIGNAL", "HANG")) {
    for (;;) pause();
  }
  if (Is("KILL_SIGNAL", "PAUSE")) {
    const char* s = getenv("KILL_PAUSE_SECONDS");
    sleep(s ? (unsigned)atoi(s) : 3);
    return;
  }
  if (Is("KILL_SIGNAL", "HANG_FSYNC")) return;
  if (Is("KILL_SIGNAL", "FAIL")) {
    failing = 1;
    return;
  }
  raise(Is("KILL_SIGNAL", "STOP") ? SIGSTOP : SIGKILL);
}

// FAIL: whether the call that just struck is to fail; sets errno, once.
static int Failed(void) {
  if (!failing) return 0;
  failing = 0;
  errno = Is("KILL_ERRNO", "ENOSPC") ? ENOSPC : EIO;
  return 1;
}

static long long StrikeCall(void) {
  const char* at = getenv("KILL_AT_CALL");
  return at ? atoll(at) : 0;
}

// Strikes at call `what` on `path`, noting it for KILL_MARK.
static void StrikeAt(const char* what, const char* path) {
  snprintf(struck_at, sizeof(struck_at), "%s %s\n", what, path);
  Strike();
}

// Counts one file call on an armed path; strikes when it is the chosen one.
static void CountCall(const char* what, const char* path) {
  ++calls;
  if (calls == StrikeCall()) StrikeAt(what, path);
}

// The same for a call on a file descriptor.
static void CountFdCall(const char* what, int fd) {
  char path[PATH_MAX];
  if (FdPath(fd, path) && ArmedPath(path)) CountCall(what, path);
}

__attribute__((destructor)) static void WriteCount(void) {
  const char* out = getenv("KILL_COUNT_FILE");
  if (!out || !IsVictim()) return;
  static int (*real_open)(const char*, int, ...);
  if (!real_open) real_open = (int (*)(const char*, int, ...))dlsym(RTLD_NEXT, "open");
  int fd = real_open(out, O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) return;
  char text[32];
  int n = snprintf(text, sizeof(text), "%lld\n", calls);
  if (write(fd, text, (size_t)n) != n) {
  }
  close(fd);
}

ssize_t pread(int fd, void* buf, size_t count, off_t offset) {
  static ssize_t (*real)(int, void*, size_t, off_t);
  if (!real) real = (ssize_t(*)(int, void*, size_t, off_t))dlsym(RTLD_NEXT, "pread");
  if (getenv("KILL_AT_CALL")) CountFdCall("pread", fd);
  if (Failed()) return -1;
  return real(fd, buf, count, offset);
}

ssize_t pread64(int fd, void* buf, size_t count, off_t offset) {
  return pread(fd, buf, count, offset);
}

int rename(const char* from, const char* to) {
  static int (*real)(const char*, const char*);
  if (!real) real = (int (*)(const char*, const char*))dlsym(RTLD_NEXT, "rename");
  if (getenv("KILL_AT_CALL") && (ArmedPath(from) || ArmedPath(to))) CountCall("rename", from);
  if (Failed()) return -1;
  return real(from, to);
}

ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) {
  static ssize_t (*real)(int, const void*, size_t, off_t);
  if (!real) real = (ssize_t(*)(int, const void*, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
  if (getenv("KILL_AT_CALL")) {
    CountFdCall("pwrite", fd);
    return Failed() ? -1 : real(fd, buf, count, offset);
  }
  if (!struck && !Is("KILL_ON_OPEN", "1") && Armed(fd)) {
    const char* after = getenv("KILL_AFTER_BYTES");
    long long budget = after ? atoll(after) : 4096;
    if (written + (long long)count >= budget) {
      if (budget > written) real(fd, buf, (size_t)(budget - written), offset);
      char path[PATH_MAX];
      StrikeAt("pwrite", FdPath(fd, path) ? path : "?");
      if (Failed()) return -1;
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
  if (getenv("KILL_AT_CALL")) CountFdCall("fsync", fd);
  if (Failed()) return -1;
  if (Is("KILL_SIGNAL", "HANG_FSYNC") && Armed(fd)) {
    for (;;) pause();
  }
  return real(fd);
}

// at: the openat form, with dirfd.
static int OpenAt(const char* symbol, int at, int dirfd, const char* path, int flags, mode_t mode) {
  if (getenv("KILL_AT_CALL")) {
    if (ArmedPath(path)) CountCall("open", path);
  } else if ((Is("KILL_ON_OPEN", "1") ||
              (Is("KILL_ON_OPEN", "read") && (flags & O_ACCMODE) == O_RDONLY)) &&
             ArmedPath(path)) {
    StrikeAt("open", path);
  }
  if (Failed()) return -1;
  if (!at) {
    int (*real)(const char*, int, ...) = (int (*)(const char*, int, ...))dlsym(RTLD_NEXT, symbol);
    return real(path, flags, mode);
  }
  int (*real)(int, const char*, int, ...) =
      (int (*)(int, const char*, int, ...))dlsym(RTLD_NEXT, symbol);
  return real(dirfd, path, flags, mode);
}

#define MODE_ARG(flags, mode)              \
  mode_t mode = 0;                         \
  if ((flags) & (O_CREAT | __O_TMPFILE)) { \
    va_list ap;                            \
    va_start(ap, flags);                   \
    mode = (mode_t)va_arg(ap, int);        \
    va_end(ap);                            \
  }

int open(const char* path, int flags, ...) {
  MODE_ARG(flags, mode);
  return OpenAt("open", 0, -1, path, flags, mode);
}
int open64(const char* path, int flags, ...) {
  MODE_ARG(flags, mode);
  return OpenAt("open64", 0, -1, path, flags, mode);
}
int openat(int dirfd, const char* path, int flags, ...) {
  MODE_ARG(flags, mode);
  return OpenAt("openat", 1, dirfd, path, flags, mode);
}
int openat64(int dirfd, const char* path, int flags, ...) {
  MODE_ARG(flags, mode);
  return OpenAt("openat64", 1, dirfd, path, flags, mode);
}
