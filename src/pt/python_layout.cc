// Python's layout of a checkpoint tree: nested dicts keyed by path parts, optimizer state keyed
// by integer parameter index, param_groups a list with Python's default hyperparameters, betas
// a tuple, and an empty optimizer "state" where there are no state tensors.
#include "pt/python_layout.h"

#include <algorithm>
#include <map>

#include "plan/plan.h"

namespace distckpt {
namespace {

bool AllDigits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    parts.push_back(path.substr(start, slash - start));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return parts;
}

struct Node {
  std::map<std::string, Node> children;
  const Leaf* leaf = nullptr;
  int64_t storage = -1;
};

PyPtr ScalarToPy(const std::string& name, const ScalarValue& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return PyValue::Int(*i);
  if (auto* d = std::get_if<double>(&v)) return PyValue::Float(*d);
  if (auto* b = std::get_if<bool>(&v)) return PyValue::Bool(*b);
  if (auto* s = std::get_if<std::string>(&v)) return PyValue::Str(*s);
  std::vector<PyPtr> items;
  if (auto* il = std::get_if<std::vector<int64_t>>(&v)) {
    for (int64_t x : *il) items.push_back(PyValue::Int(x));
  } else if (auto* dl = std::get_if<std::vector<double>>(&v)) {
    for (double x : *dl) items.push_back(PyValue::Float(x));
  } else if (auto* sl = std::get_if<std::vector<std::string>>(&v)) {
    for (const auto& x : *sl) items.push_back(PyValue::Str(x));
  }
  // torch.optim keeps betas as a tuple.
  return name == "betas" ? PyValue::Tuple(std::move(items)) : PyValue::List(std::move(items));
}

// Python's defaults for the hyperparameters LibTorch does not have, so that
// optimizer.load_state_dict gives the same optimizer (AdamW needs decoupled_weight_decay).
void AddPythonDefaults(PyValue& group) {
  auto set_default = [&](const std::string& key, PyPtr value) {
    if (!group.Get(key)) group.dict.emplace_back(PyValue::Str(key), value);
  };
  const bool adam = group.Get("betas") != nullptr;
  set_default("maximize", PyValue::Bool(false));
  set_default("foreach", PyValue::None());
  set_default("differentiable", PyValue::Bool(false));
  set_default("fused", PyValue::None());
  if (adam) {
    set_default("capturable", PyValue::Bool(false));
    set_default("decoupled_weight_decay", PyValue::Bool(false));
  }
}

PyPtr Build(const Node& node, const std::string& name) {
  if (node.leaf) {
    if (!node.leaf->is_tensor) return ScalarToPy(name, node.leaf->scalar);
    PyTensorRef ref;
    ref.storage_key = std::to_string(node.storage);
    ref.dtype = node.leaf->dtype;
    ref.storage_numel = NumElements(node.leaf->shape);
    ref.size = node.leaf->shape;
    ref.stride.assign(ref.size.size(), 1);
    for (int k = static_cast<int>(ref.size.size()) - 2; k >= 0; --k) {
      ref.stride[k] = ref.stride[k + 1] * std::max<int64_t>(ref.size[k + 1], 1);
    }
    return PyValue::Tensor(ref);
  }
  bool numeric = !node.children.empty();
  for (const auto& [k, child] : node.children) numeric = numeric && AllDigits(k);
  std::vector<std::pair<int64_t, const std::pair<const std::string, Node>*>> ordered;
  for (const auto& kv : node.children) {
    ordered.emplace_back(numeric ? std::stoll(kv.first) : 0, &kv);
  }
  if (numeric) {
    std::stable_sort(ordered.begin(), ordered.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  if (numeric && name == "param_groups") {
    std::vector<PyPtr> groups;
    for (const auto& [index, kv] : ordered) {
      PyPtr g = Build(kv->second, kv->first);
      AddPythonDefaults(*g);
      groups.push_back(g);
    }
    return PyValue::List(std::move(groups));
  }
  PyPtr dict = PyValue::Dict();
  for (const auto& [index, kv] : ordered) {
    // Optimizer state is keyed by integer parameter index.
    PyPtr key = numeric && name == "state" ? PyValue::Int(index) : PyValue::Str(kv->first);
    dict->dict.emplace_back(key, Build(kv->second, kv->first));
  }
  // torch.optim's layout always has "state", empty for a fresh optimizer, and
  // optimizer.load_state_dict raises KeyError without it; an empty dict leaves no leaf behind.
  if (node.children.count("param_groups") && !node.children.count("state")) {
    dict->dict.insert(dict->dict.begin(), {PyValue::Str("state"), PyValue::Dict()});
  }
  return dict;
}

void AssignStorages(Node& node, int64_t* next, std::vector<const Leaf*>* order) {
  if (node.leaf && node.leaf->is_tensor) {
    node.storage = (*next)++;
    order->push_back(node.leaf);
  }
  for (auto& [k, child] : node.children) AssignStorages(child, next, order);
}

}  // namespace

Leaf TensorLeaf(const std::string& path, at::ScalarType dtype, std::vector<int64_t> shape) {
  Leaf leaf;
  leaf.path = path;
  leaf.is_tensor = true;
  leaf.dtype = dtype;
  leaf.shape = std::move(shape);
  return leaf;
}

void AppendScalarLeaves(const std::map<std::string, ScalarValue>& scalars,
                        std::vector<Leaf>* leaves) {
  for (const auto& [path, value] : scalars) {
    Leaf leaf;
    leaf.path = path;
    leaf.scalar = value;
    leaves->push_back(leaf);
  }
}

PythonTree BuildPythonTree(const std::vector<Leaf>& leaves, bool model_only) {
  Node root;
  const std::string model_prefix = "model_state_dict/";
  for (const Leaf& leaf : leaves) {
    std::string path = leaf.path;
    if (model_only) {
      if (path.compare(0, model_prefix.size(), model_prefix) != 0) continue;
      path = path.substr(model_prefix.size());
    }
    Node* node = &root;
    // Module names contain dots, never slashes; each '/' is one dict level.
    for (const std::string& part : Split(path)) node = &node->children[part];
    node->leaf = &leaf;
  }
  PythonTree tree;
  int64_t next = 0;
  AssignStorages(root, &next, &tree.tensors);
  tree.root = Build(root, "");
  return tree;
}

}  // namespace distckpt
