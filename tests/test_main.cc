// main() for every test binary: MPI when launched by mpirun, gtest output from rank 0 only.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace distckpt::testing {

Communicator& Comm() {
  static std::unique_ptr<Communicator> comm = MakeDefaultCommunicator();
  return *comm;
}

std::string ScratchDir(const std::string& name) {
  const char* base = std::getenv("DISTCKPT_TEST_TMP");
  std::string root = base ? base : "/tmp/distckpt-test";
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir =
      root + "/" +
      (info ? std::string(info->test_suite_name()) + "." + info->name() : std::string("x")) +
      "-np" + std::to_string(Comm().size()) + "-" + name;
  if (Comm().rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  Comm().Barrier();
  return dir;
}

at::Tensor Pattern(at::IntArrayRef shape, at::ScalarType dtype, int64_t seed) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  if (dtype == at::kBool) return at::randint(0, 2, shape, gen, at::kLong).to(at::kBool);
  if (at::isIntegralType(dtype, /*includeBool=*/false)) {
    return at::randint(-100, 100, shape, gen, at::kLong).to(dtype).abs_();
  }
  return at::randn(shape, gen, at::kDouble).to(dtype);
}

::testing::AssertionResult BitEqual(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) return ::testing::AssertionFailure() << "dtypes differ";
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shapes differ";
  auto ca = a.contiguous().cpu();
  auto cb = b.contiguous().cpu();
  // memcmp of a null pointer is undefined even for 0 bytes (an empty tensor has no data).
  if (ca.nbytes() > 0 && std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) != 0) {
    return ::testing::AssertionFailure() << "bytes differ";
  }
  return ::testing::AssertionSuccess();
}

void FlipBit(const std::string& path, uint64_t offset, int bit) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.read(&c, 1);
  c = static_cast<char>(c ^ (1 << bit));
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

}  // namespace distckpt::testing

// The exit code of a run in which every test skipped (ctest SKIP_RETURN_CODE).
constexpr int kAllSkipped = 77;

int main(int argc, char** argv) {
  // Under mpirun every rank takes part; as a plain process MPI stays off (local world).
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    int provided = 0;  // asynchronous saves vote from a background thread
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  }
  ::testing::InitGoogleTest(&argc, argv);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (distckpt::testing::Comm().rank() != 0)
    delete listeners.Release(listeners.default_result_printer());
  int rc = RUN_ALL_TESTS();
  // A --gtest_filter that matches nothing (a renamed test) is a failure, not a pass.
  if (::testing::UnitTest::GetInstance()->test_to_run_count() == 0) {
    std::fprintf(stderr, "no test matched; was one renamed?\n");
    rc = 1;
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    // A failure on any rank fails the test everywhere.
    MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
  }
  // Nothing failed and nothing ran but skips (no GPU here): ctest reports the entry as skipped
  // (SKIP_RETURN_CODE). A failure beside a skip stays a failure.
  const auto* unit = ::testing::UnitTest::GetInstance();
  if (rc == 0 && unit->successful_test_count() == 0 && unit->skipped_test_count() > 0) {
    return kAllSkipped;
  }
  return rc;
}
