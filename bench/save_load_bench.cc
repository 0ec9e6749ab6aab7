// Save and load throughput of distckpt next to the storage limit, in one run.
//
// State: T tensors of float32 totalling --gib GiB, replicated on every rank (plain data
// parallel). Save: distckpt spreads the bytes so each rank writes ~1/N. Load: every rank loads
// its 1/N row range of every tensor (the re-sharded, read-what-you-need case). Baseline: each
// rank writes exactly its 1/N share with write()+fsync() into its own new file, and reads it back
// with read(). Page cache is evicted (posix_fadvise DONTNEED) before every read.
// GB/s = total state bytes / slowest rank's wall time (GB = 1e9 bytes). Median of --reps runs.
// Correctness: loaded slices are compared with the saved tensors; a mismatch aborts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "bench_util.h"
#include "distckpt/checkpoint.h"
#include "programs.h"
#include "tools/command_line.h"

namespace distckpt::bench::save_load_bench {

namespace {

bool MatchesGenerator(const std::vector<at::Tensor>& full) {
  for (size_t t = 0; t < full.size(); ++t) {
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(t));
    if (!at::equal(full[t], at::rand(full[t].sizes(), gen))) return false;
  }
  return true;
}

// Elastic resume, measured apart: --save-only DIR saves the state once on this rank count and
// keeps it; --load-only DIR loads the newest checkpoint in DIR on this (other) rank count, every
// rank the whole state, staged (the default) and in place. Appends "ranks,state_bytes,mode,
// seconds,peak_rss_mib" rows to --csv.
int ReshardMode(Communicator& comm, StateTree& tree, std::vector<at::Tensor>& full,
                const std::string& save_only, const std::string& load_only, int reps,
                const std::string& csv) {
  const int rank = comm.rank();
  int64_t total = 0;
  for (const at::Tensor& t : full) total += static_cast<int64_t>(t.nbytes());
  if (!save_only.empty()) {
    if (rank == 0) std::filesystem::remove_all(save_only);
    const double s = bench::TimeCollective([&] { Checkpointer(save_only, comm).Save(tree, 0); });
    if (rank == 0)
      std::printf("saved %.2f GiB on %d ranks in %.2f s\n", total / 1073741824.0, comm.size(), s);
    return 0;
  }
  Checkpointer ckpt(load_only, comm);
  const std::string dir = ckpt.Latest().value_or("");
  for (int mode = 0; mode < 2; ++mode) {
    std::vector<double> times;
    for (int rep = 0; rep < reps; ++rep) {
      if (rank == 0) bench::EvictTree(dir);
      for (auto& t : full) t.zero_();
      LoadOptions options;
      options.in_place = mode == 1;
      times.push_back(bench::TimeCollective([&] { ckpt.Load(dir, tree, options); }));
      if (!MatchesGenerator(full)) {
        std::fprintf(stderr, "rank %d: re-sharded load differs from what was saved\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 4);
      }
    }
    double rss = bench::PeakRssMiB();
    MPI_Allreduce(MPI_IN_PLACE, &rss, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    const char* name = mode == 0 ? "staged" : "in place";
    if (rank == 0) {
      const double secs = bench::Median(times);
      std::printf("re-sharded load onto %d ranks (%s): %.2f s, %.2f GB/s, peak RSS/rank %.0f MiB\n",
                  comm.size(), name, secs, total / 1e9 / secs, rss);
      if (!csv.empty()) {
        FILE* f = std::fopen(csv.c_str(), "a");
        std::fprintf(f, "%d,%lld,%s,%.3f,%.0f\n", comm.size(), (long long)total, name, secs, rss);
        std::fclose(f);
      }
    }
  }
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  double gib = 1.0;
  int reps = 3;
  int round = 0;  // which round of an interleaved comparison: shifts who writes first
  std::string dir = "/tmp/distckpt-bench";
  std::string csv, save_only, load_only;
  CLI::App app("save_load_bench: distckpt save and load against raw writes and reads",
               "save_load_bench");
  app.add_option("--save-only", save_only, "only save, into this directory");
  app.add_option("--load-only", load_only, "only load this checkpoint");
  app.add_option("--gib", gib, "state size in GiB")->check(tools::PositiveReal());
  app.add_option("--reps", reps, "repetitions")->check(tools::PositiveInt());
  app.add_option("--round", round, "round of an interleaved comparison")
      ->check(tools::NonNegativeInt());
  app.add_option("--dir", dir, "scratch directory");
  app.add_option("--csv", csv, "append rows to this CSV file");
  if (const int rc = tools::ParseCommandLineOnEveryRank(app, argc, argv); rc >= 0) return rc;
  at::set_num_threads(1);
  auto comm = MakeMpiCommunicator();
  const int rank = comm->rank(), world = comm->size();
  const int64_t tensor_bytes = 64LL << 20;
  const int64_t count =
      std::max<int64_t>(1, static_cast<int64_t>(gib * (1LL << 30)) / tensor_bytes);
  const int64_t cols = 4096, rows = tensor_bytes / 4 / cols;
  const int64_t total = count * tensor_bytes;

  StateTree tree;
  std::vector<at::Tensor> full;
  for (int64_t t = 0; t < count; ++t) {
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(t));
    full.push_back(at::rand({rows, cols}, gen));
    tree.SetTensor("model/t" + std::to_string(t), full.back());
  }
  if (!save_only.empty() || !load_only.empty()) {
    const int rc = ReshardMode(*comm, tree, full, save_only, load_only, reps, csv);
    comm.reset();
    MPI_Finalize();
    return rc;
  }
  const int64_t row0 = rows * rank / world, nrows = rows * (rank + 1) / world - row0;
  StateTree mine;
  for (int64_t t = 0; t < count; ++t) {
    // Zeros, not empty: a training job's tensors are already resident, so page faults of
    // fresh destination memory are not part of the load.
    mine.SetShardedRows("model/t" + std::to_string(t), at::zeros({nrows, cols}), {rows, cols},
                        row0);
  }
  if (rank == 0) std::filesystem::remove_all(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  std::filesystem::create_directories(dir + "/raw");
  // The baseline's share: the same bytes per rank as distckpt's even split.
  const int64_t share = total / world;
  std::vector<char> buffer(static_cast<size_t>(share));
  std::memcpy(buffer.data(), full[0].data_ptr(), std::min<int64_t>(share, tensor_bytes));
  // A new file per repetition, as every checkpoint is: on thin-provisioned virtual disks,
  // rewriting the same blocks is several times faster than writing fresh ones.
  auto raw_path = [&](int rep) {
    return dir + "/raw/rep-" + std::to_string(rep) + "-rank-" + std::to_string(rank);
  };

  std::vector<double> save_t, load_t, inplace_t, raw_w, raw_r;
  Checkpointer ckpt(dir + "/ckpt", *comm);
  for (int rep = 0; rep < reps; ++rep) {
    const std::string raw = raw_path(rep);
    auto raw_write = [&] {
      raw_w.push_back(bench::TimeCollective([&] {
        int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        for (int64_t off = 0; off < share;) {
          ssize_t n = ::write(fd, buffer.data() + off, static_cast<size_t>(share - off));
          if (n <= 0) MPI_Abort(MPI_COMM_WORLD, 1);
          off += n;
        }
        ::fsync(fd);
        ::close(fd);
      }));
    };
    std::string saved;
    auto evict = [&] {
      bench::EvictFromPageCache(raw);
      if (rank == 0 && !saved.empty()) bench::EvictTree(saved);
      MPI_Barrier(MPI_COMM_WORLD);
    };
    auto raw_read = [&] {
      evict();
      raw_r.push_back(bench::TimeCollective([&] {
        int fd = ::open(raw.c_str(), O_RDONLY);
        for (int64_t off = 0; off < share;) {
          ssize_t n = ::read(fd, buffer.data() + off, static_cast<size_t>(share - off));
          if (n <= 0) MPI_Abort(MPI_COMM_WORLD, 1);
          off += n;
        }
        ::close(fd);
      }));
    };
    auto ours = [&] {
      save_t.push_back(bench::TimeCollective([&] { saved = ckpt.Save(tree, rep); }));
      evict();
      load_t.push_back(bench::TimeCollective([&] { ckpt.Load(saved, mine); }));
      evict();
      for (auto& [path, e] : mine.mutable_tensors()) e.tensor.zero_();
      inplace_t.push_back(
          bench::TimeCollective([&] { ckpt.Load(saved, mine, LoadOptions{.in_place = true}); }));
    };
    // Each writer is followed by its reads, as in the other tools' runs (a save, then a load):
    // this disk throttles sustained writes, so two writes back to back would slow the second.
    // Who goes first alternates.
    if ((rep + round) % 2 == 0) {
      raw_write();
      raw_read();
      ours();
    } else {
      ours();
      raw_write();
      raw_read();
    }
    for (int64_t t = 0; t < count; ++t) {
      if (!at::equal(mine.tensor("model/t" + std::to_string(t)).tensor,
                     full[t].narrow(0, row0, nrows))) {
        std::fprintf(stderr, "rank %d: loaded tensor t%lld differs\n", rank, (long long)t);
        MPI_Abort(MPI_COMM_WORLD, 2);
      }
    }
    if (rep > 0) {
      // Keep the last checkpoint for the replicated-load comparison below.
      std::filesystem::remove(raw_path(rep - 1));
      if (rank == 0) std::filesystem::remove_all(*FindCheckpoint(dir + "/ckpt", rep - 1));
    }
  }
  // Every rank loads the whole replicated state (plain data-parallel resume): read once in
  // total and exchanged, against every rank reading everything itself.
  const std::string last = FindCheckpoint(dir + "/ckpt", reps - 1).value_or("");
  // The two modes alternate which goes first, so that neither always gets the disk's better
  // moments; medians of --reps each.
  std::vector<double> replicated_runs[2];
  double replicated_bytes[2] = {0, 0};
  for (int rep = 0; rep < reps; ++rep) {
    for (int k = 0; k < 2; ++k) {
      const int mode = (rep + k) % 2;
      if (rank == 0) bench::EvictTree(last);
      for (auto& t : full) t.zero_();
      LoadOptions options;
      options.read_once = mode == 0 ? ReadOnce::kOn : ReadOnce::kOff;
      replicated_runs[mode].push_back(
          bench::TimeCollective([&] { ckpt.Load(last, tree, options); }));
      replicated_bytes[mode] = static_cast<double>(ckpt.last_load_stats().bytes_read);
      MPI_Allreduce(MPI_IN_PLACE, &replicated_bytes[mode], 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
      if (!MatchesGenerator(full)) {
        std::fprintf(stderr, "rank %d: replicated load differs from what was saved\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
    }
  }
  const double replicated_t[2] = {bench::Median(replicated_runs[0]),
                                  bench::Median(replicated_runs[1])};
  double rss = bench::PeakRssMiB();
  MPI_Allreduce(MPI_IN_PLACE, &rss, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) {
    const double gb = static_cast<double>(total) / 1e9;
    const double s = bench::Median(save_t), l = bench::Median(load_t), w = bench::Median(raw_w),
                 r = bench::Median(raw_r), ip = bench::Median(inplace_t);
    std::printf(
        "ranks=%d state=%.2f GiB  save %.2f GB/s (%.2fx of write+fsync %.2f GB/s)  "
        "load %.2f GB/s (%.2fx of read %.2f GB/s)  load in place %.2f GB/s (%.2fx)  "
        "peak RSS/rank %.0f MiB\n",
        world, static_cast<double>(total) / (1 << 30), gb / s, w / s, gb / w, gb / l, r / l, gb / r,
        gb / ip, r / ip, rss);
    std::printf(
        "ranks=%d replicated load (every rank loads all): read-once %.2f s, %.2fx of the "
        "checkpoint read from storage; per-rank full reads %.2f s, %.2fx\n",
        world, replicated_t[0], replicated_bytes[0] / total, replicated_t[1],
        replicated_bytes[1] / total);
    if (!csv.empty()) {
      bool header = !std::filesystem::exists(csv);
      FILE* f = std::fopen(csv.c_str(), "a");
      if (header) {
        std::fprintf(f,
                     "ranks,state_bytes,save_gbps,raw_write_gbps,load_gbps,load_in_place_gbps,"
                     "raw_read_gbps,peak_rss_mib,replicated_read_once_s,read_once_bytes_ratio,"
                     "replicated_full_reads_s,full_reads_bytes_ratio\n");
      }
      std::fprintf(f, "%d,%lld,%.3f,%.3f,%.3f,%.3f,%.3f,%.0f,%.3f,%.3f,%.3f,%.3f\n", world,
                   (long long)total, gb / s, gb / w, gb / l, gb / ip, gb / r, rss, replicated_t[0],
                   replicated_bytes[0] / total, replicated_t[1], replicated_bytes[1] / total);
      std::fclose(f);
    }
  }
  if (rank == 0) std::filesystem::remove_all(dir);
  comm.reset();
  MPI_Finalize();
  return 0;
}

}  // namespace distckpt::bench::save_load_bench
