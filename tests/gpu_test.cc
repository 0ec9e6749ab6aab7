// GPU paths (ranks 1 and 2): save from CUDA tensors, load onto cuda:<local rank>, live export
// with the NCCL gather. Skipped, visibly, on machines without a GPU.
#include <ATen/ATen.h>

#include "distckpt/async.h"
#include "distckpt/checkpoint.h"
#include "distckpt/export.h"
#include "distckpt/nccl.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

#define SKIP_WITHOUT_GPU()                                                   \
  if (!NcclCompiledIn()) GTEST_SKIP() << "built without the NCCL/CUDA path"; \
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device on this machine"

at::Device MyDevice() { return at::Device(at::kCUDA, LocalCudaDevice(Comm())); }

TEST(Gpu, SaveFromCudaAndLoadOntoCuda) {
  SKIP_WITHOUT_GPU();
  const std::string root = testing::ScratchDir("gpu");
  const int r = Comm().rank(), n = Comm().size();
  const at::Tensor big = Pattern({512, 256}, at::kBFloat16, 1);
  StateTree tree;
  tree.SetTensor("replicated", big.to(MyDevice()));
  int64_t r0 = 512 * r / n, r1 = 512 * (r + 1) / n;
  tree.SetShardedRows("rows", big.narrow(0, r0, r1 - r0).to(MyDevice()), {512, 256}, r0);
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(tree, 1);
  StateTree back;
  back.SetTensor("replicated", at::zeros_like(big).to(MyDevice()));
  back.SetTensor("rows", at::zeros_like(big).to(MyDevice()));  // whole tensor on every rank
  ckpt.Load(dir, back);
  EXPECT_TRUE(back.tensor("replicated").tensor.is_cuda());
  EXPECT_TRUE(BitEqual(back.tensor("replicated").tensor.cpu(), big));
  EXPECT_TRUE(BitEqual(back.tensor("rows").tensor.cpu(), big));
}

TEST(Gpu, LoadOntoCudaThroughASmallStagingBudget) {
  SKIP_WITHOUT_GPU();
  const std::string root = testing::ScratchDir("gpu-staged-load");
  const at::Tensor w = Pattern({3072, 4096}, at::kFloat, 4);  // 48 MiB: 12 pieces of 4 MiB
  const at::Tensor b = Pattern({4096}, at::kBFloat16, 5);
  StateTree tree;
  tree.SetTensor("w", w);
  tree.SetTensor("wt", w);
  tree.SetTensor("b", b);
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(tree, 1);
  StateTree back;
  back.SetTensor("w", at::zeros_like(w).to(MyDevice()));
  at::Tensor transposed = at::zeros({4096, 3072}, at::TensorOptions().device(MyDevice())).t();
  back.SetTensor("wt", transposed);  // not contiguous: filled through a contiguous device tensor
  back.SetTensor("b", at::zeros_like(b).to(MyDevice()));
  LoadOptions options;
  options.device_staging.budget_bytes = 4 << 20;
  ckpt.Load(dir, back, options);
  EXPECT_TRUE(BitEqual(back.tensor("w").tensor.cpu(), w));
  EXPECT_TRUE(BitEqual(transposed.cpu().contiguous(), w));
  EXPECT_TRUE(BitEqual(back.tensor("b").tensor.cpu(), b));
  EXPECT_GT(ckpt.last_load_stats().device_staging_bytes, 0);
  EXPECT_LE(ckpt.last_load_stats().device_staging_bytes, 4 << 20);
}

TEST(Gpu, SaveFromCudaThroughASmallStagingBudgetSeesQueuedWork) {
  SKIP_WITHOUT_GPU();
  const std::string root = testing::ScratchDir("gpu-staged-save");
  const at::Tensor expected = Pattern({3072, 4096}, at::kFloat, 6);
  // Computed on the current stream just before the save: the copies must wait for it.
  at::Tensor live = at::zeros({3072, 4096}, at::TensorOptions().device(MyDevice()));
  live.add_(expected.to(MyDevice()));
  StateTree tree;
  tree.SetTensor("w", live);
  CheckpointerOptions options;
  options.device_staging.budget_bytes = 4 << 20;
  Checkpointer ckpt(root, Comm(), options);
  const std::string dir = ckpt.Save(tree, 1);
  EXPECT_LE(ckpt.last_save_stats().device_staging_bytes, 4 << 20);
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok());
  StateTree back;
  back.SetTensor("w", at::zeros({3072, 4096}));
  ckpt.Load(dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("w").tensor, expected));
}

TEST(Gpu, LiveExportGathersOverNccl) {
  SKIP_WITHOUT_GPU();
  if (Comm().local_size() > CudaDeviceCount()) {
    // MakeNcclGatherer's refusal must be clear and the same on every rank.
    auto refused = MakeNcclGatherer(Comm());
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.status().message().find("NCCL needs a GPU per rank"), std::string::npos);
    GTEST_SKIP() << Comm().local_size() << " ranks share " << CudaDeviceCount()
                 << " GPU(s); NCCL needs one per rank";
  }
  const std::string dir = testing::ScratchDir("gpu-export");
  auto gatherer = ValueOrThrow(MakeNcclGatherer(Comm()));
  const int r = Comm().rank(), n = Comm().size();
  const at::Tensor flat = Pattern({1000, 33}, at::kFloat, 2);
  int64_t e0 = 33000 * r / n, e1 = 33000 * (r + 1) / n;
  StateTree tree;
  tree.SetShardedFlat("model_state_dict/w",
                      flat.reshape({-1}).narrow(0, e0, e1 - e0).to(MyDevice()), {1000, 33}, e0);
  ExportOptions options;
  options.device_gatherer = gatherer.get();
  ThrowIfError(ExportTree(Comm(), tree, dir + "/live.pt", options));
  if (r == 0) {
    auto back = ReadPt(dir + "/live.pt");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_TRUE(BitEqual(back->tensor("model_state_dict/w").tensor, flat));
  }
}

TEST(Gpu, AsyncSnapshotOnSideStreamSeesQueuedWorkAndIgnoresLaterChanges) {
  SKIP_WITHOUT_GPU();
  const std::string root = testing::ScratchDir("gpu-async");
  const at::Tensor expected = Pattern({2048, 1024}, at::kFloat, 3);
  // Computed on the current stream just before the snapshot: the side stream must wait for it.
  at::Tensor live = at::zeros({2048, 1024}, at::TensorOptions().device(MyDevice()));
  live.add_(expected.to(MyDevice()));
  StateTree tree;
  tree.SetTensor("w", live);
  tree.SetScalar("epoch", int64_t{7});
  AsyncCheckpointer async(root, {});
  async.SaveAsync(tree, 1);
  live.mul_(-3);  // training goes on at once; the snapshot must not see this
  const std::string dir = async.Wait();
  EXPECT_GT(async.snapshot_bytes(), 0);
  StateTree back;
  back.SetTensor("w", at::zeros({2048, 1024}));
  Checkpointer(root, Comm()).Load(dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("w").tensor, expected));
  EXPECT_TRUE(BitEqual(live.cpu(), expected * -3));
}

}  // namespace
}  // namespace distckpt
