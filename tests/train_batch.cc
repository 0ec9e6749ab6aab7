// Runs many distckpt-train jobs in one MPI launch: each line of the jobs file is
// "NP OUTPUT ARGS...", a job of the trainer on the first NP ranks of the launch (a communicator
// split from MPI_COMM_WORLD) with its rank 0's stdout and stderr in OUTPUT. A job that fails
// leaves its error in OUTPUT and the next job runs. Starting LibTorch costs about half a second
// of CPU per process, most of what a small trainer job costs, so the resume matrix runs its
// jobs this way (the launch's idle ranks sleep while a smaller job runs).
// usage: mpirun -np MAX train_batch JOBS_FILE
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.h"
#include "examples/trainer.h"

namespace {

struct Job {
  int ranks = 0;
  std::string output;
  std::string args;  // the trainer's command line, without the program name
};

std::vector<Job> ReadJobs(const char* path) {
  std::vector<Job> jobs;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    Job job;
    if (!(words >> job.ranks >> job.output)) continue;
    std::getline(words, job.args);
    jobs.push_back(job);
  }
  return jobs;
}

// Waits for every rank of the launch without spinning (the ranks share few cores).
void SleepyBarrier() {
  MPI_Request request;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  for (int done = 0; MPI_Test(&request, &done, MPI_STATUS_IGNORE), !done;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Rank 0 of the job writes its output (and errors) to `path` while the job runs.
class Redirect {
 public:
  explicit Redirect(const std::string& path) {
    std::fflush(stdout);
    std::fflush(stderr);
    saved_out_ = dup(1);
    saved_err_ = dup(2);
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
  }
  ~Redirect() {
    std::fflush(stdout);
    std::fflush(stderr);
    dup2(saved_out_, 1);
    dup2(saved_err_, 2);
    close(saved_out_);
    close(saved_err_);
  }

 private:
  int saved_out_, saved_err_;
};

int RunJob(const Job& job, distckpt::Communicator& comm) {
  distckpt_train::Args args;
  CLI::App app("train_batch job");
  distckpt_train::AddOptions(app, &args);
  try {
    app.parse(job.args, false);
    return distckpt_train::Train(args, comm);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "train_batch: bad job '%s': %s\n", job.args.c_str(), e.what());
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "train_batch: rank %d: %s\n", comm.rank(), e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_batch: rank %d: %s\n", comm.rank(), e.what());
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  at::set_num_threads(1);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::vector<Job> jobs = argc == 2 ? ReadJobs(argv[1]) : std::vector<Job>{};
  int failed = 0;
  for (const Job& job : jobs) {
    if (job.ranks > size) {
      if (rank == 0)
        std::fprintf(stderr, "train_batch: %s needs %d ranks\n", job.output.c_str(), job.ranks);
      failed = 1;
      continue;
    }
    MPI_Comm group;
    MPI_Comm_split(MPI_COMM_WORLD, rank < job.ranks ? 0 : MPI_UNDEFINED, rank, &group);
    if (group != MPI_COMM_NULL) {
      std::unique_ptr<Redirect> redirect;
      if (rank == 0) redirect = std::make_unique<Redirect>(job.output);
      auto comm = distckpt::MakeMpiCommunicator(group);
      if (RunJob(job, *comm) != 0) failed = 1;
      comm.reset();
      MPI_Comm_free(&group);
    }
    SleepyBarrier();
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return jobs.empty() ? 2 : failed;
}
