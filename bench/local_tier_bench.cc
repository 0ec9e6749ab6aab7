// The local tier against the persistent root, on the hosts of launch/cluster.sh
// (bench/local_tier.sh runs it), with a realistic state (bench/transformer_shapes.py: GPT-2 small
// and its AdamW state, every rank holding all of it, data parallel).
//
// save:   rounds of, interleaved: a synchronous persistent save; a synchronous local-tier save
//         (write, copy to the next host, commit everywhere); an asynchronous local-tier save (what
//         training waits for is the snapshot). Prints the medians of the time each blocked the
//         caller. Leaves persistent step 99 and local step 100 of the same state.
// resume: on the surviving hosts after one was lost, rounds of, interleaved: the newest step
//         from the local tier (Latest() gathers the missing files from the survivors, then
//         Load; the gathered files are removed again after each round) against a load of
//         persistent step 99 with its files evicted from the page cache. Prints the medians and
//         the bytes each read from the persistent root; checks every load against the state.
// usage: mpirun ... local_tier_bench save|resume --shapes FILE --dir PERSISTENT --local LOCAL
//        [--rounds K]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "bench_util.h"
#include "distckpt/async.h"
#include "distckpt/checkpoint.h"
#include "programs.h"
#include "tools/command_line.h"

namespace distckpt::bench::local_tier_bench {

namespace {

struct Args {
  std::string mode, shapes, dir, local;
  int rounds = 3;
};

StateTree BuildState(const std::string& shapes_file, bool zeros) {
  nlohmann::json shapes;
  std::ifstream(shapes_file) >> shapes;
  StateTree tree;
  uint64_t seed = 0;
  for (const auto& entry : shapes) {
    const std::vector<int64_t> shape = entry[1].get<std::vector<int64_t>>();
    at::Tensor t =
        zeros ? at::zeros(shape) : at::rand(shape, at::detail::createCPUGenerator(++seed));
    tree.SetTensor(entry[0].get<std::string>(), t);
  }
  return tree;
}

bool Same(const StateTree& a, const StateTree& b) {
  for (const auto& [path, entry] : a.tensors()) {
    if (!at::equal(entry.tensor, b.tensor(path).tensor)) return false;
  }
  return true;
}

// Bytes read through it from files under `root`.
struct CountingEnv : EnvWrapper {
  explicit CountingEnv(std::string root) : EnvWrapper(Env::Default()), root(std::move(root)) {}
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& p) override {
    if (p.compare(0, root.size(), root) == 0) ++opened;
    return EnvWrapper::OpenReadable(p);
  }
  std::string root;
  int opened = 0;
};

CheckpointerOptions LocalOptions(const Args& a, Env* env) {
  CheckpointerOptions o;
  o.env = env;
  o.local = {a.local, 1, 1, 1};
  o.persist_every = 0;  // the local tier alone
  if (getenv("BENCH_NO_DEADLINE")) o.collective_timeout_seconds = 0;
  return o;
}

int Save(const Args& a, Communicator& comm) {
  const StateTree state = BuildState(a.shapes, false);
  Checkpointer persistent(a.dir, comm);
  Checkpointer local(a.dir, comm, LocalOptions(a, nullptr));
  AsyncCheckpointer background(a.dir, LocalOptions(a, nullptr));
  std::vector<double> sync_persistent, sync_local, async_local;
  int64_t host_bytes = 0, state_bytes = 0;
  for (const auto& [path, entry] : state.tensors()) state_bytes += entry.tensor.nbytes();
  for (int round = 0; round < a.rounds; ++round) {
    const int64_t step = 10 * (round + 1);
    sync_persistent.push_back(bench::TimeCollective([&] { persistent.Save(state, step); }));
    sync_local.push_back(bench::TimeCollective([&] { local.Save(state, step + 1); }));
    host_bytes = local.last_save_stats().local_host_bytes;
    background.SaveAsync(state, step + 2);
    async_local.push_back(background.last_blocked_seconds());
    background.Wait();
  }
  persistent.Save(state, 99);
  local.Save(state, 100);
  if (comm.rank() == 0) {
    const double p = bench::Median(sync_persistent), l = bench::Median(sync_local),
                 b = bench::Median(async_local);
    std::printf(
        "save, %d ranks, %.2f GB per rank: blocked %.3f s persistent (sync), %.3f s local (sync, "
        "%.1fx less), %.3f s local (async snapshot, %.1fx less); local tier holds %.2f GB per "
        "host per step\n",
        comm.size(), state_bytes / 1e9, p, l, p / l, b, p / b, host_bytes / 1e9);
  }
  return 0;
}

// The names of the files in `dir` (on this host).
std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.insert(e.path().filename());
  }
  return names;
}

int Resume(const Args& a, Communicator& comm) {
  const StateTree state = BuildState(a.shapes, false);
  CountingEnv counted(a.dir);
  const std::string local_dir = a.local + "/step-00000100";
  const std::string persistent_dir = a.dir + "/step-00000099";
  // What this host holds of the local step after the loss, restored after each round so that
  // every round gathers the missing files again.
  const std::set<std::string> held =
      comm.local_rank() == 0 ? FilesIn(local_dir) : std::set<std::string>{};
  std::vector<double> gather_s, local_s, persistent_s;
  std::string chosen, why;
  int local_opened = 0;
  int64_t local_read = 0, local_reread = 0, persistent_read = 0;
  bool ok = true;
  for (int round = 0; round < a.rounds; ++round) {
    Checkpointer local(a.dir, comm, LocalOptions(a, &counted));
    StateTree from_local = BuildState(a.shapes, true);
    counted.opened = 0;
    gather_s.push_back(bench::TimeCollective([&] { chosen = local.Latest().value_or(""); }));
    local_s.push_back(gather_s.back() +
                      bench::TimeCollective([&] { chosen = local.Load(chosen, from_local); }));
    local_opened = std::max(local_opened, counted.opened);
    local_read = local.last_load_stats().bytes_read;
    local_reread = local.last_load_stats().bytes_reread;
    why = local.latest_reason();
    ok = ok && Same(state, from_local);
    if (comm.local_rank() == 0) {
      for (const std::string& f : FilesIn(local_dir)) {
        if (!held.count(f)) std::filesystem::remove(local_dir + "/" + f);
      }
      bench::EvictTree(persistent_dir);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    StateTree from_persistent = BuildState(a.shapes, true);
    Checkpointer persistent(a.dir, comm, CheckpointerOptions{.env = &counted});
    persistent_s.push_back(
        bench::TimeCollective([&] { persistent.Load(persistent_dir, from_persistent); }));
    persistent_read = persistent.last_load_stats().bytes_read;
    ok = ok && Same(state, from_persistent);
  }
  if (comm.rank() == 0) {
    const double l = bench::Median(local_s), p = bench::Median(persistent_s);
    std::printf(
        "resume on %d ranks after a lost host, medians of %d interleaved rounds: %.3f s from the "
        "local tier (%.3f s of it to find, verify and gather the step; %s; %s; the load read "
        "%.2f GB on rank 0, %.2f GB of it a second time), %.3f s from the persistent root "
        "(%.1fx; it read %.2f GB on rank 0); persistent files opened by the local resume on "
        "rank 0: %d; every load equal to the state: %s\n",
        comm.size(), a.rounds, l, bench::Median(gather_s), chosen.c_str(), why.c_str(),
        local_read / 1e9, local_reread / 1e9, p, p / l, persistent_read / 1e9, local_opened,
        ok ? "yes" : "NO");
  }
  return ok ? 0 : 1;
}

}  // namespace

int Main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  Args a;
  CLI::App app("local tier against the persistent root");
  app.add_option("mode", a.mode, "save or resume")
      ->required()
      ->check(CLI::IsMember({"save", "resume"}));
  app.add_option("--shapes", a.shapes, "tensor shapes (bench/transformer_shapes.py)")->required();
  app.add_option("--dir", a.dir, "persistent root")->required();
  app.add_option("--local", a.local, "node-local root")->required();
  app.add_option("--rounds", a.rounds, "save rounds")->check(CLI::PositiveNumber);
  if (const int rc = tools::ParseCommandLineOnEveryRank(app, argc, argv); rc >= 0) return rc;
  at::set_num_threads(1);
  auto comm = MakeDefaultCommunicator();
  const int out = a.mode == "save" ? Save(a, *comm) : Resume(a, *comm);
  comm.reset();
  MPI_Finalize();
  return out;
}

}  // namespace distckpt::bench::local_tier_bench
