// Save and load of device-resident state through the staging ring, next to what the machine
// gives in the same run: a raw write and read of the same number of bytes (pwrite/pread in
// 64 MiB pieces, fsync, page cache evicted before each read) and copies between page-locked
// host memory and the device through the same copy engine. GB/s = tensor bytes / seconds.
// Host memory: the peak resident size during each save and load above the size just before it
// (the state, the destination tensors and the runtime already resident), next to the budget.
//
// --device cuda: float32 tensors of 256 MiB on the GPU (cuda:0), the built-in engine.
// --device fake: the same on the CPU behind the tests' fake device (copies on a worker thread),
//                which shows the host-memory bound on a machine without a GPU.
// --device cpu:  the same as plain CPU tensors (no staging), the reference for "fake".
// One size per process, so that page-locked memory cached by an earlier size is not mistaken
// for part of the baseline. Prints one line and appends one CSV row.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "bench_util.h"
#include "distckpt/checkpoint.h"
#include "distckpt/copy_engine.h"
#include "programs.h"
#include "tests/fake_device.h"
#include "tools/command_line.h"

namespace distckpt::bench::staging_bench {

namespace {

constexpr int64_t kTensorElems = 64 << 20;  // 256 MiB of float32
constexpr size_t kRawPiece = 64 << 20;

struct Args {
  double gib = 1;
  std::string device = "fake";
  int64_t budget_mib = 256;
  std::string dir = "/tmp/distckpt-staging-bench";
  std::string csv;
};

// Seconds to write `bytes` to a file and fsync it, then to read it back from storage.
std::pair<double, double> RawWriteRead(const std::string& path, int64_t bytes) {
  std::vector<char> buffer(kRawPiece);
  for (size_t i = 0; i < buffer.size(); i += 4096) buffer[i] = static_cast<char>(i * 31 + 7);
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  double t0 = bench::Now();
  for (int64_t off = 0; off < bytes; off += kRawPiece) {
    const size_t n = std::min<int64_t>(kRawPiece, bytes - off);
    if (::pwrite(fd, buffer.data(), n, off) != static_cast<ssize_t>(n)) std::perror("pwrite");
  }
  ::fsync(fd);
  const double write_s = bench::Now() - t0;
  ::close(fd);
  bench::EvictFromPageCache(path);
  fd = ::open(path.c_str(), O_RDONLY);
  t0 = bench::Now();
  for (int64_t off = 0; off < bytes; off += kRawPiece) {
    const size_t n = std::min<int64_t>(kRawPiece, bytes - off);
    if (::pread(fd, buffer.data(), n, off) != static_cast<ssize_t>(n)) std::perror("pread");
  }
  const double read_s = bench::Now() - t0;
  ::close(fd);
  std::filesystem::remove(path);
  return {write_s, read_s};
}

// Seconds to copy every tensor to the host and back through two page-locked buffers of
// `chunk` bytes, two copies in flight: what the link gives the ring.
std::pair<double, double> LinkCopies(CopyEngine* engine, const std::vector<at::Tensor>& tensors,
                                     int64_t chunk) {
  std::vector<at::Tensor> host = {ValueOrThrow(engine->AllocateHost(chunk)),
                                  ValueOrThrow(engine->AllocateHost(chunk))};
  auto run = [&](bool to_device) {
    ThrowIfError(engine->Start());
    const double t0 = bench::Now();
    int ticket = 0;
    for (const at::Tensor& t : tensors) {
      const at::Tensor flat = t.view({-1});
      const int64_t per = chunk / static_cast<int64_t>(t.element_size());
      for (int64_t b = 0; b < flat.numel(); b += per, ticket ^= 1) {
        const int64_t n = std::min(per, flat.numel() - b);
        ThrowIfError(engine->Wait(ticket, 0));
        at::Tensor h = host[ticket].narrow(0, 0, n * t.element_size()).view(t.scalar_type());
        at::Tensor d = flat.narrow(0, b, n);
        ThrowIfError(to_device ? engine->CopyToDevice(h, d, ticket)
                               : engine->CopyToHost(d, h, ticket));
      }
    }
    ThrowIfError(engine->Finish(0));
    return bench::Now() - t0;
  };
  const double d2h = run(false);
  return {run(true), d2h};
}

// Seconds `fn` took, and the peak resident MiB above the resident size just before it.
template <typename Fn>
std::pair<double, double> Measured(Fn&& fn) {
  const double base = bench::RssMiB();
  bench::ResetPeakRss();
  const double t0 = bench::Now();
  fn();
  return {bench::Now() - t0, bench::HighWaterMiB() - base};
}

struct Figures {
  double gb, save_s, save_peak, load_s, load_peak, raw_write_s, raw_read_s, h2d_s, d2h_s;
};

void Report(const Args& args, const Figures& f) {
  const bool staged = args.device != "cpu";  // no link copies to time for plain CPU tensors
  const double d2h = staged ? f.gb / f.d2h_s : 0, h2d = staged ? f.gb / f.h2d_s : 0;
  const double gib = f.gb * 1e9 / double(1 << 30);
  std::printf(
      "%s %.2f GiB budget %lld MiB: save %.2f GB/s (raw write %.2f, device->host %.2f), load "
      "%.2f GB/s (raw read %.2f, host->device %.2f); peak host memory above baseline: save "
      "%.0f MiB, load %.0f MiB\n",
      args.device.c_str(), gib, static_cast<long long>(args.budget_mib), f.gb / f.save_s,
      f.gb / f.raw_write_s, d2h, f.gb / f.load_s, f.gb / f.raw_read_s, h2d, f.save_peak,
      f.load_peak);
  if (args.csv.empty()) return;
  const bool fresh = !std::filesystem::exists(args.csv);
  std::ofstream out(args.csv, std::ios::app);
  if (fresh) {
    out << "device,gib,budget_mib,save_gbps,load_gbps,raw_write_gbps,raw_read_gbps,"
           "d2h_gbps,h2d_gbps,save_peak_mib,load_peak_mib\n";
  }
  out << args.device << "," << gib << "," << args.budget_mib << "," << f.gb / f.save_s << ","
      << f.gb / f.load_s << "," << f.gb / f.raw_write_s << "," << f.gb / f.raw_read_s << "," << d2h
      << "," << h2d << "," << f.save_peak << "," << f.load_peak << "\n";
}

std::unique_ptr<CopyEngine> MakeEngine(const Args& args, testing::FakeDevice** fake) {
  if (args.device != "fake") return MakeDeviceCopyEngine();
  auto owned = std::make_unique<testing::FakeDevice>();
  owned->delay = std::chrono::microseconds(0);
  owned->check_host_buffers = false;
  *fake = owned.get();
  return owned;
}

int Run(const Args& args) {
  if (args.device == "cuda" && !at::hasCUDA()) {
    std::fprintf(stderr, "staging_bench: --device cuda: no CUDA device on this machine\n");
    return 1;
  }
  if (!bench::ResetPeakRss()) {
    std::fprintf(stderr, "staging_bench: /proc/self/clear_refs refused: peaks are whole-process\n");
  }
  testing::FakeDevice* fake = nullptr;
  std::unique_ptr<CopyEngine> engine = MakeEngine(args, &fake);
  const at::Device where = args.device == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  auto place = [&](const at::Tensor& t) { return fake ? fake->NewTensor(t) : t.to(where); };
  const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(args.gib * 4 + 0.5));
  Figures f{};
  f.gb = static_cast<double>(count * kTensorElems * 4) / 1e9;
  StateTree state, back;
  std::vector<at::Tensor> originals;
  for (int64_t i = 0; i < count; ++i) {
    const std::string name = "model_state_dict/layer" + std::to_string(i);
    originals.push_back(place(at::rand({kTensorElems})));
    state.SetTensor(name, originals.back());
    back.SetTensor(name, place(at::zeros({kTensorElems})));
  }
  std::filesystem::remove_all(args.dir);
  auto comm = MakeDefaultCommunicator();
  CheckpointerOptions options;
  options.device_staging = {engine.get(), args.budget_mib << 20, 4};
  Checkpointer ckpt(args.dir, *comm, options);
  std::string dir;
  std::tie(f.save_s, f.save_peak) = Measured([&] { dir = ckpt.Save(state, 1); });
  bench::EvictTree(dir);
  LoadOptions load;
  load.device_staging = options.device_staging;
  std::tie(f.load_s, f.load_peak) = Measured([&] { ckpt.Load(dir, back, load); });
  for (const auto& [name, entry] : back.tensors()) {
    if (!at::equal(entry.tensor, state.tensor(name).tensor)) {
      std::fprintf(stderr, "MISMATCH after load: %s\n", name.c_str());
      return 1;
    }
  }
  std::filesystem::remove_all(args.dir);
  std::filesystem::create_directories(args.dir);
  std::tie(f.raw_write_s, f.raw_read_s) =
      RawWriteRead(args.dir + "/raw.bin", count * kTensorElems * 4);
  if (args.device != "cpu") {
    std::tie(f.h2d_s, f.d2h_s) = LinkCopies(engine.get(), originals, (args.budget_mib << 20) / 4);
  }
  Report(args, f);
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Args args;
  CLI::App app("staging_bench: save and load of device tensors through the staging ring",
               "staging_bench");
  app.add_option("--gib", args.gib, "state size in GiB (tensors of 256 MiB)")
      ->check(tools::PositiveReal());
  app.add_option("--device", args.device, "cuda or fake")
      ->check(CLI::IsMember({"cuda", "fake", "cpu"}));
  app.add_option("--budget-mib", args.budget_mib, "staging budget per rank, MiB")
      ->check(tools::PositiveInt());
  app.add_option("--dir", args.dir, "scratch directory (removed first)");
  app.add_option("--csv", args.csv, "append a row to this CSV file");
  int rc = tools::ParseCommandLine(app, argc, argv);
  if (rc < 0) {
    try {
      rc = Run(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "staging_bench: %s\n", e.what());
      rc = 1;
    }
  }
  MPI_Finalize();
  return rc;
}

}  // namespace distckpt::bench::staging_bench
