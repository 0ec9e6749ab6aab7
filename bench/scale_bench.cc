// Cost against the tensor count: N tensors of E float32 elements each (replicated), saved by
// every rank's share and loaded whole by every rank, with the time per tensor. Correctness is
// checked: every loaded tensor equals what was saved.
// usage: mpirun -np R scale_bench --tensors N [--elems E] [--dir DIR] [--csv FILE]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <mpi.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "bench_util.h"
#include "distckpt/checkpoint.h"
#include "programs.h"
#include "tools/command_line.h"

namespace distckpt::bench::scale_bench {

namespace {

std::string Name(int64_t i) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model_state_dict/layers.%lld.weight", static_cast<long long>(i));
  return buf;
}

}  // namespace

int Main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int64_t tensors = 1000, elems = 16;
  std::string dir = "/tmp/distckpt-scale-bench", csv;
  CLI::App app("scale_bench: save and load time against the number of tensors", "scale_bench");
  app.add_option("--tensors", tensors, "number of tensors")->check(tools::PositiveInt());
  app.add_option("--elems", elems, "float32 elements per tensor")->check(tools::PositiveInt());
  app.add_option("--dir", dir, "scratch directory (removed first)");
  app.add_option("--csv", csv, "append a row to this CSV file");
  if (const int rc = tools::ParseCommandLineOnEveryRank(app, argc, argv); rc >= 0) return rc;
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  at::set_num_threads(1);
  if (rank == 0) std::filesystem::remove_all(dir);
  auto comm = MakeMpiCommunicator();
  // One storage for all tensors, so that building the state is not what is measured.
  at::Tensor storage = at::arange(tensors * elems, at::kFloat);
  StateTree tree, back;
  at::Tensor back_storage = at::zeros({tensors * elems}, at::kFloat);
  for (int64_t i = 0; i < tensors; ++i) {
    tree.SetTensor(Name(i), storage.narrow(0, i * elems, elems));
    back.SetTensor(Name(i), back_storage.narrow(0, i * elems, elems));
  }
  Checkpointer ckpt(dir, *comm);
  std::string saved;
  // Coordination: everything but writing the tensor bytes and fsync, the slowest rank's.
  auto coordination = [&] {
    const SaveStats& st = ckpt.last_save_stats();
    if (getenv("SCALE_BENCH_PHASES")) {
      std::printf("rank %d: plan %.2f layout %.2f write %.2f commit %.2f total %.2f\n", rank,
                  st.plan_seconds, st.layout_seconds, st.write_seconds, st.commit_seconds,
                  st.total_seconds);
    }
    double c = ckpt.last_save_stats().coordination_seconds();
    MPI_Allreduce(MPI_IN_PLACE, &c, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return c;
  };
  const double save_s = bench::TimeCollective([&] { saved = ckpt.Save(tree, 1); });
  const double coord_s = coordination();
  // The same shapes again: the plan is reused (SaveStats::plan_reused).
  const double again_s = bench::TimeCollective([&] { ckpt.Save(tree, 2); });
  const bool reused = ckpt.last_save_stats().plan_reused;
  const double coord_again_s = coordination();
  const double load_s = bench::TimeCollective([&] { ckpt.Load(saved, back); });
  int ok = at::equal(storage, back_storage) ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  uint64_t disk = 0;
  for (auto& e : std::filesystem::directory_iterator(saved)) disk += e.file_size();
  if (rank == 0) {
    const double bytes = static_cast<double>(tensors * elems * 4);
    std::printf(
        "ranks=%d tensors=%lld elems=%lld: save %.2f s (%.1f us/tensor, coordination %.2f s), "
        "repeated save %.2f s (plan reused: %s, coordination %.2f s), load %.2f s (%.1f "
        "us/tensor), on disk %.3fx the tensor bytes, loaded tensors %s\n",
        world, static_cast<long long>(tensors), static_cast<long long>(elems), save_s,
        save_s / tensors * 1e6, coord_s, again_s, reused ? "yes" : "no", coord_again_s, load_s,
        load_s / tensors * 1e6, disk / bytes, ok ? "equal" : "DIFFER");
    if (!csv.empty()) {
      std::ofstream out(csv, std::ios::app);
      out << world << "," << tensors << "," << elems << "," << save_s << "," << coord_s << ","
          << again_s << "," << coord_again_s << "," << load_s << "," << disk / bytes << "," << ok
          << "\n";
    }
  }
  comm.reset();
  MPI_Finalize();
  return ok ? 0 : 1;
}

}  // namespace distckpt::bench::scale_bench
