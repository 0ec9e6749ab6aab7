// A realistic state (bench/transformer_shapes.py: a transformer's parameters and AdamW state)
// saved and loaded by distckpt next to the storage limit, interleaved round by round.
//
// Every rank holds the whole state (data parallel). Per round: distckpt save; load of the whole
// state on every rank; load of 1/N of every tensor's rows on each rank. The storage limit, with
// the same bytes: each rank writes its 1/N of the state's bytes with write()+fsync() into a new
// file; every rank reads all N files (whole-state load); each rank reads its own file (1/N
// load). Page cache is evicted before every read. Every load is compared with the state.
// Prints one line and appends "ranks,bytes,tensors,op,tool,seconds" rows (medians) to --csv.
// usage: mpirun -np R mix_bench --shapes FILE [--rounds K] [--dir DIR] [--csv FILE]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "distckpt/checkpoint.h"
#include "programs.h"
#include "tools/command_line.h"

namespace distckpt::bench::mix_bench {

namespace {

struct State {
  StateTree source, whole, part;
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // the source, in order
  int64_t bytes = 0;
};

State BuildState(const std::string& shapes_file, int rank, int world) {
  nlohmann::json shapes;
  std::ifstream(shapes_file) >> shapes;
  State s;
  int64_t seed = 0;
  for (const auto& entry : shapes) {
    const std::string name = entry[0].get<std::string>();
    const std::vector<int64_t> shape = entry[1].get<std::vector<int64_t>>();
    at::Tensor t = at::rand(shape, at::detail::createCPUGenerator(static_cast<uint64_t>(++seed)));
    s.source.SetTensor(name, t);
    s.whole.SetTensor(name, at::zeros_like(t));
    if (shape.empty()) {
      s.part.SetTensor(name, at::zeros_like(t));  // a 0-dim tensor cannot be split
    } else {
      const int64_t r0 = shape[0] * rank / world, r1 = shape[0] * (rank + 1) / world;
      std::vector<int64_t> mine = shape;
      mine[0] = r1 - r0;
      s.part.SetShardedRows(name, at::zeros(mine), shape, r0);
    }
    s.tensors.emplace_back(name, t);
    s.bytes += static_cast<int64_t>(t.nbytes());
  }
  return s;
}

bool WholeMatches(const State& s) {
  for (const auto& [name, t] : s.tensors) {
    if (!at::equal(s.whole.tensor(name).tensor, t)) return false;
  }
  return true;
}

bool PartMatches(const State& s) {
  for (const auto& [name, t] : s.tensors) {
    const TensorEntry& e = s.part.tensor(name);
    at::Tensor want = t.dim() == 0 ? t : t.narrow(0, e.offset, e.tensor.size(0));
    if (!at::equal(e.tensor, want)) return false;
  }
  return true;
}

// The storage limit: plain write()+fsync() and read() of the same bytes.
class Raw {
 public:
  Raw(const State& s, std::string dir, int rank, int world)
      : state_(s), dir_(std::move(dir)), rank_(rank), world_(world), buffer_(64 << 20) {}

  std::string File(int r) const { return dir_ + "/raw-rank-" + std::to_string(r); }

  // Writes bytes [rank/N, (rank+1)/N) of the state's tensors laid end to end.
  void Write() {
    const int64_t begin = state_.bytes * rank_ / world_, end = state_.bytes * (rank_ + 1) / world_;
    int fd = ::open(File(rank_).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int64_t pos = 0;
    for (const auto& [name, t] : state_.tensors) {
      const int64_t n = static_cast<int64_t>(t.nbytes());
      const int64_t a = std::max(pos, begin), b = std::min(pos + n, end);
      if (a < b) WriteAll(fd, static_cast<const char*>(t.data_ptr()) + (a - pos), b - a);
      pos += n;
    }
    ::fsync(fd);
    ::close(fd);
  }

  void ReadAll() {
    for (int r = 0; r < world_; ++r) ReadFile(File(r));
  }
  void ReadMine() { ReadFile(File(rank_)); }

 private:
  static void WriteAll(int fd, const char* p, int64_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd, p, static_cast<size_t>(n));
      if (w <= 0) MPI_Abort(MPI_COMM_WORLD, 5);
      p += w;
      n -= w;
    }
  }
  void ReadFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    while (::read(fd, buffer_.data(), buffer_.size()) > 0) {
    }
    ::close(fd);
  }

  const State& state_;
  std::string dir_;
  int rank_, world_;
  std::vector<char> buffer_;
};

}  // namespace

int Main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  std::string shapes, dir = "/tmp/distckpt-mix-bench", csv;
  int rounds = 2;
  CLI::App app("mix_bench: a transformer's state, distckpt against the storage limit", "mix_bench");
  app.add_option("--shapes", shapes, "JSON list of [name, shape] (bench/transformer_shapes.py)")
      ->required();
  app.add_option("--rounds", rounds, "interleaved rounds (medians)")->check(tools::PositiveInt());
  app.add_option("--dir", dir, "scratch directory (removed first)");
  app.add_option("--csv", csv, "append rows to this CSV file");
  if (const int rc = tools::ParseCommandLineOnEveryRank(app, argc, argv); rc >= 0) return rc;
  at::set_num_threads(1);
  auto comm = MakeMpiCommunicator();
  const int rank = comm->rank(), world = comm->size();
  State state = BuildState(shapes, rank, world);
  if (rank == 0) std::filesystem::remove_all(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  std::filesystem::create_directories(dir);
  Raw raw(state, dir, rank, world);
  Checkpointer ckpt(dir + "/ckpt", *comm);
  std::map<std::string, std::vector<double>> times;
  std::string saved;
  int round_now = 0;
  auto evict = [&] {
    bench::EvictFromPageCache(raw.File(rank));
    if (rank == 0 && !saved.empty()) bench::EvictTree(saved);
    MPI_Barrier(MPI_COMM_WORLD);
  };
  auto time = [&](const std::string& what, auto&& fn) {
    evict();
    times[what].push_back(bench::TimeCollective(fn));
    if (rank == 0 && std::getenv("MIX_BENCH_VERBOSE")) {
      std::printf("  round %d: %s %.2f s\n", round_now, what.c_str(), times[what].back());
    }
  };
  auto check = [&](bool ok, const char* what) {
    int all = ok ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all) {
      if (rank == 0) std::fprintf(stderr, "mix_bench: %s differs from the state\n", what);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  };
  for (int round = 0; round < rounds; ++round) {
    round_now = round;
    auto ours = [&] {
      if (rank == 0 && !saved.empty()) std::filesystem::remove_all(saved);
      time("save distckpt", [&] { saved = ckpt.Save(state.source, round); });
      auto whole = [&] {
        for (auto& [p, e] : state.whole.mutable_tensors()) e.tensor.zero_();
        time("load whole distckpt", [&] { ckpt.Load(saved, state.whole); });
        check(WholeMatches(state), "the whole-state load");
      };
      auto part = [&] {
        for (auto& [p, e] : state.part.mutable_tensors()) e.tensor.zero_();
        time("load 1/N distckpt", [&] { ckpt.Load(saved, state.part); });
        check(PartMatches(state), "the 1/N load");
      };
      // The first read after a write is often slower or faster on this disk: alternate.
      if (round % 2 == 0) {
        whole();
        part();
      } else {
        part();
        whole();
      }
    };
    auto limit = [&] {
      time("save raw", [&] { raw.Write(); });
      if (round % 2 == 0) {
        time("load whole raw", [&] { raw.ReadAll(); });
        time("load 1/N raw", [&] { raw.ReadMine(); });
      } else {
        time("load 1/N raw", [&] { raw.ReadMine(); });
        time("load whole raw", [&] { raw.ReadAll(); });
      }
    };
    if (round % 2 == 0) {
      ours();
      limit();
    } else {
      limit();
      ours();
    }
  }
  if (rank == 0) {
    auto median = [&](const std::string& k) { return bench::Median(times[k]); };
    std::printf(
        "ranks=%d mix %.2f GB, %zu tensors: save %.2f s (raw %.2f s: %.2fx), load whole %.2f s "
        "(raw %.2f s: %.2fx), load 1/N %.2f s (raw %.2f s: %.2fx)\n",
        world, state.bytes / 1e9, state.tensors.size(), median("save distckpt"), median("save raw"),
        median("save raw") / median("save distckpt"), median("load whole distckpt"),
        median("load whole raw"), median("load whole raw") / median("load whole distckpt"),
        median("load 1/N distckpt"), median("load 1/N raw"),
        median("load 1/N raw") / median("load 1/N distckpt"));
    if (!csv.empty()) {
      std::ofstream out(csv, std::ios::app);
      for (const auto& [key, v] : times) {
        const size_t space = key.rfind(' ');
        out << world << "," << state.bytes << "," << state.tensors.size() << ","
            << key.substr(0, space) << "," << key.substr(space + 1) << "," << bench::Median(v)
            << "\n";
      }
    }
    std::filesystem::remove_all(dir);
  }
  comm.reset();
  MPI_Finalize();
  return 0;
}

}  // namespace distckpt::bench::mix_bench
