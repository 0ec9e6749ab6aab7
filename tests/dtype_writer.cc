// Writes a checkpoint with one tensor per dtype and known values, for h5py_test.py, and the
// fuzz target's fixture (small pieces, so that mutations reach the per-piece checksums).
#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "distckpt/checkpoint.h"

int main(int argc, char** argv) {
  // dtype_writer ROOT [packed|unpacked [PIECE_BYTES]]
  if (argc < 2 || argc > 4) return 2;
  auto comm = distckpt::MakeLocalCommunicator();
  distckpt::StateTree tree;
  auto values = at::tensor({-2.5, -1.0, 0.0, 0.5, 1.0, 3.0}, at::kDouble).reshape({2, 3});
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kChar, at::kShort,
                     at::kInt, at::kLong, at::kByte}) {
    auto v = at::isIntegralType(dtype, false) ? values.abs().to(dtype) : values.to(dtype);
    tree.SetTensor("model_state_dict/" + distckpt::DtypeName(dtype), v);
  }
  tree.SetTensor("model_state_dict/bool", values.gt(0));
  tree.SetScalar("epoch", int64_t{7});
  tree.SetScalar("loss", 0.125);
  distckpt::CheckpointerOptions options;
  if (argc >= 3 && std::string(argv[2]) == "unpacked") options.pack_below_bytes = 0;
  if (argc == 4) options.piece_bytes = std::atoll(argv[3]);
  distckpt::Checkpointer ckpt(argv[1], *comm, options);
  std::printf("%s\n", ckpt.Save(tree, 1).c_str());
  return 0;
}
