// The golden checkpoints in tests/data/v2: every dtype in every placement, packed and unpacked,
// and every scalar type, with values computed from the element index alone.
//   golden write ROOT   under mpirun -np 3: how tests/data/v2 was made (run once per format
//                       version; its output is committed)
//   golden check CKPT   under any rank count: loads CKPT into this rank's part of every tensor
//                       and checks every bit and every scalar
#include <ATen/ATen.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "distckpt/checkpoint.h"

namespace {

using distckpt::Communicator;
using distckpt::StateTree;

const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kHalf,          at::kBFloat16,
                                  at::kChar,  at::kShort,  at::kInt,           at::kLong,
                                  at::kByte,  at::kBool,   at::kFloat8_e4m3fn, at::kFloat8_e5m2};

// Element i of tensor number `seed`: small integers over 8 (exact in every float dtype), with
// NaN, -inf, inf and -0.0 at elements 1-4 of float tensors.
at::Tensor Expected(at::IntArrayRef shape, at::ScalarType dtype, int64_t seed) {
  at::Tensor i = at::arange(c10::multiply_integers(shape), at::kLong);
  at::Tensor v = (i * 37 + seed * 11) % 251 - 125;
  if (dtype == at::kBool) return ((i * 37 + seed) % 3).eq(0).reshape(shape);
  if (dtype == at::kByte) return (v + 125).to(dtype).reshape(shape);
  if (!at::isFloatingType(dtype)) return v.to(dtype).reshape(shape);
  at::Tensor f = v.to(at::kDouble) / 8;
  const double specials[] = {std::numeric_limits<double>::quiet_NaN(),
                             -std::numeric_limits<double>::infinity(),
                             std::numeric_limits<double>::infinity(), -0.0};
  for (int k = 0; k < 4 && k + 1 < f.numel(); ++k) f[k + 1] = specials[k];
  return f.to(dtype).reshape(shape);
}

std::pair<int64_t, int64_t> Part(int64_t n, int rank, int world) {
  const int64_t lo = n * rank / world, hi = n * (rank + 1) / world;
  return {lo, hi - lo};
}

// This rank's part of every tensor (zeros to load into when `zeros`).
StateTree Tree(const Communicator& comm, bool zeros) {
  const int r = comm.rank(), n = comm.size();
  auto fill = [&](const at::Tensor& t) { return zeros ? at::zeros_like(t) : t; };
  StateTree tree;
  auto rows = [&](const std::string& path, const at::Tensor& whole) {
    auto [row0, count] = Part(whole.size(0), r, n);
    tree.SetShardedRows(path, fill(whole.narrow(0, row0, count).clone()), whole.sizes().vec(),
                        row0);
  };
  auto flat = [&](const std::string& path, const at::Tensor& whole) {
    auto [e0, count] = Part(whole.numel(), r, n);
    tree.SetShardedFlat(path, fill(whole.reshape({-1}).narrow(0, e0, count).clone()),
                        whole.sizes().vec(), e0);
  };
  int64_t seed = 0;
  for (at::ScalarType d : kDtypes) {
    const std::string name = distckpt::DtypeName(d);
    tree.SetTensor("model_state_dict/replicated/" + name, fill(Expected({5, 3}, d, ++seed)));
    rows("model_state_dict/rows/" + name, Expected({7, 4}, d, ++seed));
    flat("optimizer_state_dict/state/0/flat/" + name, Expected({5, 5}, d, ++seed));
    // Unpacked: each shard is at least 4 KiB, the threshold the golden checkpoint was saved with.
    const int64_t rows_per_rank = std::max<int64_t>(1, 4 / c10::elementSize(d));
    rows("model_state_dict/large_rows/" + name, Expected({3 * rows_per_rank, 1024}, d, ++seed));
  }
  tree.SetTensor("model_state_dict/large_replicated", fill(Expected({8, 256}, at::kFloat, ++seed)));
  flat("model_state_dict/large_flat", fill(Expected({3 * 2100}, at::kShort, ++seed)));
  tree.SetTensor("model_state_dict/empty", fill(Expected({0, 3}, at::kFloat, ++seed)));
  tree.SetTensor("model_state_dict/zero_dim", fill(Expected({}, at::kDouble, ++seed)));
  tree.SetScalar("epoch", int64_t{7});
  tree.SetScalar("loss", 0.1);
  tree.SetScalar("scalars/nan", std::numeric_limits<double>::quiet_NaN());
  tree.SetScalar("scalars/flag", true);
  tree.SetScalar("scalars/name", std::string("golden \"v2\" \xc3\xa9"));
  tree.SetScalar("scalars/ints", std::vector<int64_t>{-1, 0, int64_t{1} << 62});
  tree.SetScalar("scalars/doubles", std::vector<double>{0.5, -1e300, 1e-310});
  tree.SetScalar("scalars/strings", std::vector<std::string>{"a", ""});
  return tree;
}

bool SameBits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  // An empty tensor may have no storage: memcmp must not see its null pointer.
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

int Check(Communicator& comm, const std::string& dir) {
  distckpt::Checkpointer ckpt(std::filesystem::path(dir).parent_path().string(), comm);
  StateTree loaded = Tree(comm, true);
  ckpt.Load(dir, loaded);
  const StateTree expected = Tree(comm, false);
  int bad = 0;
  for (const auto& [path, e] : expected.tensors()) {
    if (SameBits(loaded.tensor(path).tensor, e.tensor)) continue;
    std::fprintf(stderr, "rank %d: tensor %s differs\n", comm.rank(), path.c_str());
    ++bad;
  }
  for (const auto& [path, value] : expected.scalars()) {
    const auto& got = loaded.scalar(path);
    const bool nan = path == "scalars/nan" && std::holds_alternative<double>(got) &&
                     std::isnan(std::get<double>(got));
    if (got == value || nan) continue;
    std::fprintf(stderr, "rank %d: scalar %s differs\n", comm.rank(), path.c_str());
    ++bad;
  }
  if (comm.rank() == 0 && bad == 0) {
    std::printf("ok   %s: %zu tensors and %zu scalars bit-exact on %d rank(s)\n", dir.c_str(),
                expected.tensors().size(), expected.scalars().size(), comm.size());
  }
  return bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rc = 2;
  {
    auto comm = distckpt::MakeDefaultCommunicator();
    const std::string mode = argc == 3 ? argv[1] : "";
    try {
      if (mode == "write") {
        distckpt::CheckpointerOptions options;
        options.pack_below_bytes = 4096;
        distckpt::Checkpointer ckpt(argv[2], *comm, options);
        const std::string dir = ckpt.Save(Tree(*comm, false), 3);
        if (comm->rank() == 0) std::printf("%s\n", dir.c_str());
        rc = 0;
      } else if (mode == "check") {
        rc = Check(*comm, argv[2]);
      } else {
        std::fprintf(stderr, "usage: golden write ROOT | golden check CKPT\n");
      }
    } catch (const distckpt::Error& e) {
      std::fprintf(stderr, "golden: %s\n", e.what());
      rc = 1;
    }
  }
  MPI_Finalize();
  return rc;
}
