// Peak memory and time of `distckpt export` (a separate process, measured with wait4) on a
// state of --gib GiB made of tensors no larger than --max-mib MiB. Aim: peak resident memory
// under 1.25 x the largest tensor + 256 MiB, whatever the total. Correctness: the exported file
// is read back and every tensor compared with the regenerated original.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "bench_util.h"
#include "distckpt/checkpoint.h"
#include "distckpt/export.h"
#include "programs.h"
#include "tools/command_line.h"

namespace distckpt::bench::export_bench {

namespace {

at::Tensor Make(int64_t index, int64_t numel) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(index));
  return at::rand({numel / 1024, 1024}, gen);
}

}  // namespace

int Main(int argc, char** argv) {
  double gib = 4;
  int64_t max_mib = 256;
  std::string dir = "/tmp/distckpt-export-bench", cli = "build/distckpt", csv;
  CLI::App app("export_bench: distckpt export of a checkpoint against its size", "export_bench");
  app.add_option("--gib", gib, "state size in GiB")->check(tools::PositiveReal());
  app.add_option("--max-mib", max_mib, "largest tensor in MiB")->check(tools::PositiveInt());
  app.add_option("--dir", dir, "scratch directory (removed first)");
  app.add_option("--cli", cli, "the distckpt binary")->check(CLI::ExistingFile);
  app.add_option("--csv", csv, "append a row to this CSV file");
  if (const int rc = tools::ParseCommandLine(app, argc, argv); rc >= 0) return rc;
  at::set_num_threads(1);
  std::filesystem::remove_all(dir);
  const int64_t total = static_cast<int64_t>(gib * (1LL << 30));
  // Sizes cycle through max, max/2, max/4 so the state is not one uniform block.
  std::vector<int64_t> sizes;
  for (int64_t done = 0, i = 0; done < total; ++i) {
    int64_t bytes = std::min((max_mib << 20) >> (i % 3), total - done);
    sizes.push_back(bytes / 4);
    done += bytes;
  }
  int64_t largest = 0;
  std::string ckpt;
  {
    StateTree tree;
    for (size_t i = 0; i < sizes.size(); ++i) {
      tree.SetTensor("model_state_dict/layer" + std::to_string(i) + ".weight", Make(i, sizes[i]));
      largest = std::max(largest, sizes[i] * 4);
    }
    tree.SetScalar("epoch", int64_t{1});
    auto comm = MakeLocalCommunicator();
    ckpt = Checkpointer(dir + "/ckpt", *comm).Save(tree, 1);
  }
  const std::string out = dir + "/export.pt";
  const double t0 = bench::Now();
  pid_t pid = fork();
  if (pid == 0) {
    execl(cli.c_str(), cli.c_str(), "export", ckpt.c_str(), out.c_str(), (char*)nullptr);
    _exit(127);
  }
  int status = 0;
  struct rusage ru;
  wait4(pid, &status, 0, &ru);
  const double secs = bench::Now() - t0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "distckpt export failed\n");
    return 1;
  }
  const double peak_mib = ru.ru_maxrss / 1024.0;
  const double limit_mib = 1.25 * largest / (1 << 20) + 256;
  // Read back tensor by tensor through a .pt reader and compare with the originals.
  auto back = ReadPt(out);
  if (!back.ok()) {
    std::fprintf(stderr, "%s\n", back.status().ToString().c_str());
    return 1;
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (!at::equal(back->tensor("model_state_dict/layer" + std::to_string(i) + ".weight").tensor,
                   Make(i, sizes[i]))) {
      std::fprintf(stderr, "tensor %zu differs after export\n", i);
      return 2;
    }
  }
  std::printf(
      "export of %.2f GiB (%zu tensors, largest %lld MiB): %.2f s, %.2f GB/s, peak RSS "
      "%.0f MiB (limit 1.25 x largest + 256 = %.0f MiB: %s)\n",
      static_cast<double>(total) / (1 << 30), sizes.size(), static_cast<long long>(largest >> 20),
      secs, total / 1e9 / secs, peak_mib, limit_mib, peak_mib < limit_mib ? "met" : "MISSED");
  if (!csv.empty()) {
    bool header = !std::filesystem::exists(csv);
    FILE* f = std::fopen(csv.c_str(), "a");
    if (header) std::fprintf(f, "tool,state_bytes,largest_bytes,seconds,peak_rss_mib\n");
    std::fprintf(f, "distckpt export,%lld,%lld,%.3f,%.0f\n", (long long)total, (long long)largest,
                 secs, peak_mib);
    std::fclose(f);
  }
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace distckpt::bench::export_bench
