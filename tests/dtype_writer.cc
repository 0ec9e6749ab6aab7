// Writes a checkpoint with one tensor per dtype and known values, for h5py_test.py.
#include <ATen/ATen.h>

#include <cstdio>

#include "distckpt/checkpoint.h"

int main(int argc, char** argv) {
  // dtype_writer ROOT [unpacked]
  if (argc < 2 || argc > 3) return 2;
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
  if (argc == 3) options.pack_below_bytes = 0;
  distckpt::Checkpointer ckpt(argv[1], *comm, options);
  std::printf("%s\n", ckpt.Save(tree, 1).c_str());
  return 0;
}
