// How long training is blocked by SaveAsync against a synchronous Save of the same state, and
// the step time of a stand-in training step with a background save running against none.
// State: --gib GiB of float32 tensors (64 MiB each), replicated. Times are the slowest rank's.
// --cuda puts the state on the rank's GPU and snapshots it on a side stream into pinned memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <mpi.h>

#include <cstdio>
#include <filesystem>

#include "bench_util.h"
#include "distckpt/async.h"
#include "distckpt/nccl.h"
#include "programs.h"
#include "tools/command_line.h"

namespace distckpt::bench::async_bench {

int Main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  double gib = 1;
  std::string dir = "/tmp/distckpt-async-bench";
  bool cuda = false;
  int reps = 3;
  CLI::App app("async_bench: time blocked by SaveAsync against a synchronous save", "async_bench");
  app.add_flag("--cuda", cuda, "state on the GPU, snapshots through the built-in CUDA copy engine");
  app.add_option("--gib", gib, "state size in GiB")->check(tools::PositiveReal());
  app.add_option("--dir", dir, "scratch directory (removed first)");
  app.add_option("--reps", reps, "rounds of alternating saves")->check(tools::PositiveInt());
  if (const int rc = tools::ParseCommandLineOnEveryRank(app, argc, argv); rc >= 0) return rc;
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  at::set_num_threads(1);
  if (rank == 0) std::filesystem::remove_all(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(gib * 16));
  auto comm = MakeDefaultCommunicator();
  at::TensorOptions where;
  if (cuda) {
    if (CudaDeviceCount() == 0) {
      if (rank == 0) std::printf("SKIPPED: --cuda: no CUDA device\n");
      comm.reset();
      MPI_Finalize();
      return 0;
    }
    where = where.device(at::Device(at::kCUDA, LocalCudaDevice(*comm)));
  }
  StateTree tree;
  for (int64_t t = 0; t < count; ++t) {
    tree.SetTensor("t" + std::to_string(t), at::rand({16 << 20}, where));
  }
  at::Tensor a = at::rand({384, 384}, where), b = at::rand({384, 384}, where);
  auto step = [&] {  // a stand-in for a training step: some matrix work
    const double t0 = bench::Now();
    for (int k = 0; k < 10; ++k) a = at::tanh(at::mm(a, b));
    (void)a.sum().item<float>();  // waits for the GPU
    return bench::Now() - t0;
  };
  // Synchronous and asynchronous saves alternate, so that both see the same disk weather;
  // the first asynchronous save (which allocates the snapshot buffers) is not counted.
  Checkpointer sync(dir + "/sync", *comm);
  AsyncCheckpointer async(dir + "/async", {});
  async.SaveAsync(tree, 0);
  async.Wait();
  std::vector<double> idle, busy, sync_s, blocked;
  for (int k = 0; k < 10; ++k) idle.push_back(step());
  for (int rep = 1; rep <= reps; ++rep) {
    sync_s.push_back(bench::TimeCollective([&] { sync.Save(tree, rep); }));
    blocked.push_back(bench::TimeCollective([&] { async.SaveAsync(tree, rep); }));
    // Steps while the writer runs: as long as a synchronous save takes, at least 3.
    const double until = bench::Now() + sync_s.back();
    int steps = 0;
    while (steps++ < 3 || bench::Now() < until) busy.push_back(step());
    async.Wait();
  }
  double v[4] = {bench::Median(sync_s), bench::Median(blocked), bench::Median(idle),
                 bench::Median(busy)};
  MPI_Allreduce(MPI_IN_PLACE, v, 4, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf(
        "ranks=%d state=%.2f GiB on %s  medians of %d: synchronous save %.2f s  SaveAsync "
        "blocked %.3f s (%.1f%% of the synchronous save)  step %.1f ms idle, %.1f ms during "
        "the background save (%d steps)\n",
        world, gib, cuda ? "GPU" : "CPU", reps, v[0], v[1], 100 * v[1] / v[0], v[2] * 1e3,
        v[3] * 1e3, static_cast<int>(busy.size()));
    std::filesystem::remove_all(dir);
  }
  comm.reset();
  MPI_Finalize();
  return 0;
}

}  // namespace distckpt::bench::async_bench
