// Saves and loads of device tensors through the staging ring, driven by a fake device
// (fake_device.h) so that they run without a GPU: contents bit-exact, host memory within the
// budget, copies overlapping with reads and writes, and every failure of a copy, a checksum, an
// allocation or a deadline agreed on by every rank with the tensor and rank named.
#include "gpu/staging.h"

#include <ATen/ATen.h>

#include "distckpt/async.h"
#include "distckpt/checkpoint.h"
#include "fake_device.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::FakeDevice;
using testing::Pattern;

// The tensors below are several times larger than this.
constexpr int64_t kBudget = 1 << 20;
constexpr int64_t kRows = 600;

DeviceStaging Staging(FakeDevice& device) { return {&device, kBudget, 4}; }
LoadOptions Through(FakeDevice& device) {
  LoadOptions options;
  options.device_staging = Staging(device);
  return options;
}

// name -> full contents; "rows" is sharded by rows across the ranks, the rest replicated.
std::map<std::string, at::Tensor> Contents() {
  return {{"model/big", Pattern({1024, 1024}, at::kFloat, 1)},
          {"model/half", Pattern({3000, 333}, at::kBFloat16, 2)},
          {"model/rows", Pattern({kRows, 1000}, at::kLong, 3)},
          {"model/small", Pattern({10}, at::kFloat, 4)},
          {"model/empty", Pattern({0, 4}, at::kFloat, 5)},
          {"model/scalar", Pattern({}, at::kDouble, 6)}};
}

std::pair<int64_t, int64_t> MyRows() {
  const int r = Comm().rank(), n = Comm().size();
  return {kRows * r / n, kRows * (r + 1) / n};
}

// The model, its tensors made by `make` (on the CPU or on the fake device).
StateTree Model(const std::function<at::Tensor(const at::Tensor&)>& make) {
  StateTree tree;
  for (const auto& [name, full] : Contents()) {
    if (name == "model/rows") {
      auto [r0, r1] = MyRows();
      tree.SetShardedRows(name, make(full.narrow(0, r0, r1 - r0)), full.sizes().vec(), r0);
    } else {
      tree.SetTensor(name, make(full));
    }
  }
  tree.SetScalar("epoch", int64_t{4});
  return tree;
}

StateTree CpuModel() {
  return Model([](const at::Tensor& t) { return t.clone(); });
}
StateTree DeviceZeros(FakeDevice& device) {
  return Model([&](const at::Tensor& t) { return device.NewTensor(at::zeros_like(t)); });
}

void ExpectModel(const StateTree& tree) {
  for (const auto& [name, full] : Contents()) {
    at::Tensor want = full;
    if (name == "model/rows")
      want = full.narrow(0, MyRows().first, MyRows().second - MyRows().first);
    EXPECT_TRUE(BitEqual(tree.tensor(name).tensor, want)) << name;
  }
}

bool AllZero(const StateTree& tree) {
  for (const auto& [name, entry] : tree.tensors()) {
    if (entry.tensor.numel() > 0 && entry.tensor.abs().sum().item<double>() != 0) return false;
  }
  return true;
}

int64_t TotalBytes(const StateTree& tree) {
  int64_t total = 0;
  for (const auto& [name, entry] : tree.tensors()) total += entry.tensor.nbytes();
  return total;
}

// Where the last shard of `tensor` lies in checkpoint `dir` (to damage it).
ShardRecord LastShardOf(Checkpointer& ckpt, const std::string& dir, const std::string& tensor) {
  return ValueOrThrow(ReadManifest(dir)).FindTensor(tensor)->shards.back();
}

std::string MessageOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.status().message();
  }
  return "no error";
}

TEST(Staging, RingSizesItsPiecesWithinTheBudget) {
  FakeDevice device;
  StagingRing ring(&device, {&device, kBudget, 4}, 64 << 10);
  EXPECT_EQ(ring.chunk_bytes(), kBudget / 4);
  // A checksum piece larger than a quarter of the budget: whole pieces, fewer buffers.
  StagingRing coarse(&device, {&device, kBudget, 4}, 512 << 10);
  EXPECT_EQ(coarse.chunk_bytes(), 512 << 10);
  const std::string name = "t";
  at::Tensor t = device.NewTensor(Pattern({1 << 20}, at::kFloat, 9));
  std::vector<uint8_t> seen;
  ASSERT_TRUE(coarse
                  .FromDevice(
                      {{t, true, &name}},
                      [&](size_t, int64_t begin, const void* data, int64_t n) {
                        EXPECT_EQ(begin, static_cast<int64_t>(seen.size()));
                        seen.insert(seen.end(), static_cast<const uint8_t*>(data),
                                    static_cast<const uint8_t*>(data) + n);
                        return Status::Ok();
                      },
                      0)
                  .ok());
  EXPECT_EQ(coarse.buffer_count(), 2);
  EXPECT_LE(coarse.host_bytes(), kBudget);
  EXPECT_EQ(std::memcmp(seen.data(), t.data_ptr(), t.nbytes()), 0);
  EXPECT_GE(device.max_in_flight, 2);
  EXPECT_TRUE(device.Violations().empty()) << device.Violations()[0];
}

TEST(Staging, LoadIntoDeviceTensorsThroughBoundedBuffers) {
  const std::string root = testing::ScratchDir("staging-load");
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(CpuModel(), 1);
  FakeDevice device;
  StateTree back = DeviceZeros(device);
  // A destination that is not contiguous is filled through a contiguous device tensor.
  at::Tensor transposed = device.NewTensor(at::zeros({1024, 1024})).t();
  back.SetTensor("model/big", transposed);
  LoadOptions options = Through(device);
  ckpt.Load(dir, back, options);
  back.SetTensor("model/big", transposed.contiguous());
  ExpectModel(back);
  EXPECT_EQ(back.scalar("epoch"), ScalarValue(int64_t{4}));
  EXPECT_LE(device.allocated_bytes, kBudget);
  EXPECT_GT(ckpt.last_load_stats().device_staging_bytes, 0);
  EXPECT_LE(ckpt.last_load_stats().device_staging_bytes, kBudget);
  EXPECT_GE(device.copies, TotalBytes(back) / kBudget);
  EXPECT_GE(device.max_in_flight, 2) << "the next piece was not read while a copy ran";
  EXPECT_EQ(device.starts, device.finishes);
  auto violations = device.Violations();
  EXPECT_TRUE(violations.empty()) << violations.size() << " breaches, the first: " << violations[0];
}

TEST(Staging, SaveFromDeviceTensorsThroughBoundedBuffers) {
  const std::string root = testing::ScratchDir("staging-save");
  FakeDevice device;
  CheckpointerOptions options;
  options.piece_bytes = 64 << 10;
  options.device_staging = Staging(device);
  Checkpointer ckpt(root, Comm(), options);
  const std::string dir =
      ckpt.Save(Model([&](const at::Tensor& t) { return device.NewTensor(t); }), 1);
  EXPECT_LE(device.allocated_bytes, kBudget);
  EXPECT_GT(ckpt.last_save_stats().device_staging_bytes, 0);
  EXPECT_GE(device.max_in_flight, 2) << "no copy ran ahead of the writer";
  auto violations = device.Violations();
  EXPECT_TRUE(violations.empty()) << violations.size() << " breaches, the first: " << violations[0];
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok()) << report->problems[0].ToString();
  StateTree back = Model([](const at::Tensor& t) { return at::zeros_like(t); });
  ckpt.Load(dir, back);
  ExpectModel(back);
}

TEST(Staging, CorruptPieceFailsBeforeAnyCopyToTheDevice) {
  Checkpointer ckpt(testing::ScratchDir("staging-corrupt"), Comm());
  const std::string dir = ckpt.Save(CpuModel(), 1);
  const ShardRecord shard = LastShardOf(ckpt, dir, "model/half");
  if (Comm().rank() == 0) testing::FlipBit(dir + "/" + shard.file, shard.byte_offset + 1000);
  ASSERT_TRUE(Comm().Barrier().ok());
  FakeDevice device;
  StateTree back = DeviceZeros(device);
  LoadOptions options = Through(device);
  const std::string message = MessageOf([&] { ckpt.Load(dir, back, options); });
  EXPECT_NE(message.find("model/half"), std::string::npos) << message;
  EXPECT_EQ(device.copies, 0);
  EXPECT_TRUE(AllZero(back)) << "a destination changed before every piece was verified";
  // Read in place (one pass), the tensors before the damaged one are overwritten, and said so.
  options.in_place = true;
  const std::string in_place = MessageOf([&] { ckpt.Load(dir, back, options); });
  EXPECT_NE(in_place.find("model/half"), std::string::npos) << in_place;
  EXPECT_NE(in_place.find("partly overwritten"), std::string::npos) << in_place;
  EXPECT_GT(device.copies, 0);
  EXPECT_TRUE(device.Violations().empty());
}

TEST(Staging, BytesChangedAfterVerificationAreCaughtMidPipelineAndSaid) {
  Checkpointer ckpt(testing::ScratchDir("staging-changed"), Comm());
  const std::string dir = ckpt.Save(CpuModel(), 1);
  const ShardRecord shard = LastShardOf(ckpt, dir, "model/half");
  ASSERT_TRUE(Comm().Barrier().ok());
  FakeDevice device;
  // Verification has passed on every rank once copies start: the damage lands between the
  // passes, after "model/big" is on its way to the device and before "model/half" is read again.
  device.before_first_copy = [&] {
    if (Comm().rank() == 0) testing::FlipBit(dir + "/" + shard.file, shard.byte_offset + 1000);
  };
  StateTree back = DeviceZeros(device);
  LoadOptions options = Through(device);
  const std::string message = MessageOf([&] { ckpt.Load(dir, back, options); });
  if (Comm().rank() == 0) {
    EXPECT_NE(message.find("checksum mismatch"), std::string::npos) << message;
    EXPECT_NE(message.find("could not be read again after it was verified"), std::string::npos)
        << message;
  }
  EXPECT_NE(message.find("partly overwritten"), std::string::npos) << message;
  EXPECT_NE(message.find("model/half"), std::string::npos) << message;
  EXPECT_TRUE(BitEqual(back.tensor("model/big").tensor, Contents()["model/big"]))
      << "the tensor before the damaged one was placed";
}

TEST(Staging, FailedCopyToTheDeviceIsAgreedOnAndNamed) {
  const std::string root = testing::ScratchDir("staging-copyfail");
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(CpuModel(), 1);
  FakeDevice device;
  const int last = Comm().size() - 1;
  if (Comm().rank() == last) device.fail_copy_at = 2;
  StateTree back = DeviceZeros(device);
  LoadOptions options = Through(device);
  const std::string message = MessageOf([&] { ckpt.Load(dir, back, options); });
  EXPECT_NE(message.find("injected fault: copy refused"), std::string::npos) << message;
  EXPECT_NE(message.find("tensor 'model/"), std::string::npos) << message;
  EXPECT_NE(message.find("copying to the device"), std::string::npos) << message;
  if (Comm().size() > 1) {
    EXPECT_NE(message.find("rank " + std::to_string(last)), std::string::npos) << message;
  }
  // An error reported only when the copies are waited for is caught the same way.
  FakeDevice late;
  late.fail_wait_at = 3;
  StateTree again = DeviceZeros(late);
  options.device_staging = Staging(late);
  const std::string waited = MessageOf([&] { ckpt.Load(dir, again, options); });
  EXPECT_NE(waited.find("illegal address"), std::string::npos) << waited;
  EXPECT_NE(waited.find("partly overwritten"), std::string::npos) << waited;
}

TEST(Staging, StalledCopyEndsTheLoadAtItsDeadline) {
  const std::string root = testing::ScratchDir("staging-stall");
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(CpuModel(), 1);
  FakeDevice device;
  device.hang_at = 3;
  StateTree back = DeviceZeros(device);
  LoadOptions options = Through(device);
  options.timeout_seconds = 1;
  const double t0 = MonotonicSeconds();
  const std::string message = MessageOf([&] { ckpt.Load(dir, back, options); });
  EXPECT_NE(message.find("did not finish within the time limit"), std::string::npos) << message;
  EXPECT_NE(message.find("tensor 'model/"), std::string::npos) << message;
  EXPECT_LT(MonotonicSeconds() - t0, 10);
}

TEST(Staging, FailedOrStalledCopyFromTheDeviceCommitsNothing) {
  const std::string root = testing::ScratchDir("staging-savefail");
  FakeDevice good;
  CheckpointerOptions options;
  options.device_staging = Staging(good);
  const auto on = [](FakeDevice& d) {
    return Model([&](const at::Tensor& t) { return d.NewTensor(t); });
  };
  const std::string first = Checkpointer(root, Comm(), options).Save(on(good), 1);
  for (const bool stall : {false, true}) {
    FakeDevice bad;
    if (Comm().rank() == 0) (stall ? bad.hang_at : bad.fail_copy_at) = 2;
    options.device_staging = Staging(bad);
    options.save_timeout_seconds = stall ? 1 : 0;
    Checkpointer ckpt(root, Comm(), options);
    const std::string message = MessageOf([&] { ckpt.Save(on(bad), 2); });
    EXPECT_NE(message.find(stall ? "time limit" : "copy refused"), std::string::npos) << message;
    EXPECT_NE(message.find(stall ? "waiting for a copy of its bytes" : "copying out its bytes"),
              std::string::npos)
        << message;
    EXPECT_EQ(ckpt.Latest().value_or(""), first);
  }
  StateTree back = Model([](const at::Tensor& t) { return at::zeros_like(t); });
  Checkpointer(root, Comm()).Load(first, back);
  ExpectModel(back);
}

TEST(Staging, AllocationFailureLeavesTheDestinationsAlone) {
  const std::string root = testing::ScratchDir("staging-alloc");
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(CpuModel(), 1);
  FakeDevice device;
  device.fail_allocate = true;
  StateTree back = DeviceZeros(device);
  LoadOptions options = Through(device);
  const std::string message = MessageOf([&] { ckpt.Load(dir, back, options); });
  EXPECT_NE(message.find("cannot allocate page-locked memory"), std::string::npos) << message;
  EXPECT_EQ(message.find("partly overwritten"), std::string::npos) << message;
  EXPECT_TRUE(AllZero(back));
}

TEST(Staging, AsyncSnapshotOfDeviceTensorsIsCompleteWhenSaveAsyncReturns) {
  const std::string root = testing::ScratchDir("staging-async");
  FakeDevice device;
  device.delay = std::chrono::milliseconds(2);
  CheckpointerOptions options;
  options.device_staging = Staging(device);
  StateTree tree = Model([&](const at::Tensor& t) { return device.NewTensor(t); });
  std::string dir;
  {
    AsyncCheckpointer async(root, options);
    async.SaveAsync(tree, 1);
    // Training changes the model at once: the snapshot must already hold the old values.
    for (auto& [name, entry] : tree.mutable_tensors()) entry.tensor.fill_(7);
    dir = async.Wait();
  }
  EXPECT_TRUE(device.Violations().empty());
  EXPECT_GT(device.copies, 0);
  StateTree back = Model([](const at::Tensor& t) { return at::zeros_like(t); });
  Checkpointer(root, Comm()).Load(dir, back);
  ExpectModel(back);
}

}  // namespace
}  // namespace distckpt
