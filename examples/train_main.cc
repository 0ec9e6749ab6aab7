// distckpt-train: deterministic data-parallel training over MPI, checkpointed with distckpt
// (examples/trainer.cc has the job).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <mpi.h>

#include <csignal>
#include <cstdio>

#include "distckpt/comm.h"
#include "examples/trainer.h"
#include "tools/command_line.h"

int main(int argc, char** argv) {
  // A file-size limit (RLIMIT_FSIZE) should fail the write with EFBIG, not kill the rank.
  std::signal(SIGXFSZ, SIG_IGN);
  int provided = 0;  // --async saves vote from a background thread
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  distckpt_train::Args args;
  CLI::App app("distckpt-train: data-parallel training with distckpt checkpoints",
               "distckpt-train");
  distckpt_train::AddOptions(app, &args);
  if (const int rc = distckpt::tools::ParseCommandLineOnEveryRank(app, argc, argv); rc >= 0) {
    return rc;
  }
  at::set_num_threads(1);
  auto comm = distckpt::MakeDefaultCommunicator();
  int rc = 0;
  try {
    rc = distckpt_train::Train(args, *comm);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "distckpt-train: rank %d: %s\n", comm->rank(), e.what_without_backtrace());
    rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distckpt-train: rank %d: %s\n", comm->rank(), e.what());
    rc = 1;
  }
  comm.reset();
  MPI_Finalize();
  return rc;
}
