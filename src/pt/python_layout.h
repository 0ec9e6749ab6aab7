// The tree as Python sees it after torch.load: which dicts, lists and tuples hold which leaves.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "distckpt/tree.h"
#include "pt/pickle.h"

namespace distckpt {

// One leaf of the exported tree: a tensor (dtype and global shape) or a scalar.
struct Leaf {
  std::string path;
  bool is_tensor = false;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  ScalarValue scalar;
};

Leaf TensorLeaf(const std::string& path, at::ScalarType dtype, std::vector<int64_t> shape);
void AppendScalarLeaves(const std::map<std::string, ScalarValue>& scalars,
                        std::vector<Leaf>* leaves);

struct PythonTree {
  PyPtr root;                        // the object torch.load returns
  std::vector<const Leaf*> tensors;  // tensors[i] is stored as record data/<i>
};

// `leaves` in Python's layout ({"epoch", "model_state_dict", "optimizer_state_dict", ...}, or
// the bare model state_dict when `model_only`). The tree points into `leaves`. Throws
// std::exception on an index too large for Python's int keys.
PythonTree BuildPythonTree(const std::vector<Leaf>& leaves, bool model_only);

}  // namespace distckpt
