// The subset of Python pickle that torch.save files use, both ways.
//
// PickleWriter emits protocol 2 with only what torch's weights-only unpickler accepts: dicts,
// lists, tuples, ints, floats, bools, strings, None, and tensors as
// torch._utils._rebuild_tensor_v2 over ('storage', torch.<Dtype>Storage, key, 'cpu', numel)
// persistent ids. Unpickle is a restricted reader: it never calls anything; the only globals it
// accepts are the tensor-rebuild functions, collections.OrderedDict and the storage types, and
// anything else is refused with an error that names the global.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distckpt/status.h"

namespace distckpt {

struct PyValue;
using PyPtr = std::shared_ptr<PyValue>;

struct PyTensorRef {
  std::string storage_key;  // record "data/<key>" in the archive (zip), or the legacy key
  at::ScalarType dtype = at::ScalarType::Float;
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

struct PyValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kTuple,
    kList,
    kDict,
    kTensor,
    kGlobal,
    kStorage,
    kObject  // an instance, by its class's name (s); never constructed (UnpickleObjects)
  };
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;                              // string, or "module.name" of a global
  std::vector<PyPtr> items;                   // tuple, list; an object's args or tuple state
  std::vector<std::pair<PyPtr, PyPtr>> dict;  // insertion order; an object's attributes
  PyTensorRef tensor;                         // tensor, or storage (key, dtype, numel)

  static PyPtr None();
  static PyPtr Bool(bool v);
  static PyPtr Int(int64_t v);
  static PyPtr Float(double v);
  static PyPtr Str(std::string v);
  static PyPtr Tuple(std::vector<PyPtr> v);
  static PyPtr List(std::vector<PyPtr> v);
  static PyPtr Dict();
  static PyPtr Tensor(PyTensorRef ref);
  // The value stored under string key `key` in a dict, or nullptr.
  PyPtr Get(const std::string& key) const;
};

// Unpickle, and besides any class instance as a kObject that records its class name, the
// arguments it was created with and the state it was given (attributes); torch.Size becomes a
// tuple. Nothing is called: for metadata files of plain records (PyTorch DCP's .metadata).
Result<PyPtr> UnpickleObjects(const std::string& bytes);

// The Python name of a dtype's legacy storage class ("FloatStorage"); "" if none.
std::string StorageClassName(at::ScalarType dtype);

std::string Pickle(const PyValue& root);
Result<PyPtr> Unpickle(const std::string& bytes);
// The pickle that starts at byte *pos of `bytes` (a file of several pickles, as the legacy
// torch.save format is); *pos moves past its STOP. `truncated` (when given) says whether the
// pickle ran past the end of `bytes`.
Result<PyPtr> Unpickle(const std::string& bytes, size_t* pos, bool* truncated = nullptr);

}  // namespace distckpt
