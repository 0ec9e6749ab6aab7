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

using namespace distckpt;

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  double gib = 1;
  std::string dir = "/tmp/distckpt-async-bench";
  bool cuda = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--cuda") cuda = true;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--gib") gib = std::stod(argv[i + 1]);
    if (std::string(argv[i]) == "--dir") dir = argv[i + 1];
  }
  at::set_num_threads(1);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (rank == 0) std::filesystem::remove_all(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(gib * 16));
  auto comm = MakeDefaultCommunicator();
  std::unique_ptr<HostCopier> copier;
  at::TensorOptions where;
  if (cuda) {
    auto made = MakeCudaHostCopier();
    if (!made.ok()) {
      if (rank == 0) std::printf("SKIPPED: --cuda: %s\n", made.status().ToString().c_str());
      comm.reset();
      MPI_Finalize();
      return 0;
    }
    copier = std::move(*made);
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
  Checkpointer sync(dir + "/sync", *comm);
  const double sync_s = bench::TimeCollective([&] { sync.Save(tree, 1); });
  std::vector<double> idle;
  for (int k = 0; k < 10; ++k) idle.push_back(step());
  AsyncCheckpointer async(dir + "/async", {}, copier.get());
  async.SaveAsync(tree, 1);  // the first one allocates the snapshot buffers
  async.Wait();
  const double blocked = bench::TimeCollective([&] { async.SaveAsync(tree, 2); });
  std::vector<double> busy;
  // Steps while the writer runs: as many as a synchronous save takes, at least 3.
  const double until = bench::Now() + sync_s;
  while (busy.size() < 3 || bench::Now() < until) busy.push_back(step());
  const double wait0 = bench::Now();
  async.Wait();
  const double tail = bench::Now() - wait0;
  double step_idle = bench::Median(idle), step_busy = bench::Median(busy);
  double v[3] = {step_idle, step_busy, tail};
  MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf(
        "ranks=%d state=%.2f GiB on %s  synchronous save %.2f s  SaveAsync blocked %.3f s "
        "(%.1f%% of the synchronous save)  step %.1f ms idle, %.1f ms during the "
        "background save (%d steps)\n",
        world, gib, cuda ? "GPU" : "CPU", sync_s, blocked, 100 * blocked / sync_s, v[0] * 1e3,
        v[1] * 1e3, static_cast<int>(busy.size()));
    std::filesystem::remove_all(dir);
  }
  comm.reset();
  MPI_Finalize();
  return 0;
}
