#include "pt/pickle.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "core/dtype.h"
#include "core/status_macros.h"
#include "distckpt/tree.h"

namespace distckpt {

PyPtr PyValue::None() { return std::make_shared<PyValue>(); }
PyPtr PyValue::Bool(bool v) {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kBool;
  p->b = v;
  return p;
}
PyPtr PyValue::Int(int64_t v) {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kInt;
  p->i = v;
  return p;
}
PyPtr PyValue::Float(double v) {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kFloat;
  p->d = v;
  return p;
}
PyPtr PyValue::Str(std::string v) {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kString;
  p->s = std::move(v);
  return p;
}
PyPtr PyValue::Tuple(std::vector<PyPtr> v) {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kTuple;
  p->items = std::move(v);
  return p;
}
PyPtr PyValue::List(std::vector<PyPtr> v) {
  auto p = Tuple(std::move(v));
  p->kind = Kind::kList;
  return p;
}
PyPtr PyValue::Dict() {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kDict;
  return p;
}
PyPtr PyValue::Tensor(PyTensorRef ref) {
  auto p = std::make_shared<PyValue>();
  p->kind = Kind::kTensor;
  p->tensor = std::move(ref);
  return p;
}
PyPtr PyValue::Get(const std::string& key) const {
  for (const auto& [k, v] : dict) {
    if (k->kind == Kind::kString && k->s == key) return v;
  }
  return nullptr;
}

namespace {

// Opcodes (Python's Lib/pickle.py).
enum : uint8_t {
  kMark = '(',
  kStop = '.',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTupleOp = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kEmptyDict = '}',
  kProto = 0x80,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kNewObj = 0x81,
  kEmptySet = 0x8f,
  kAddItems = 0x90,
  kFrozenSet = 0x91,
  kNewObjEx = 0x92,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

class Writer {
 public:
  std::string Finish(const PyValue& root) {
    out_ += static_cast<char>(kProto);
    out_ += static_cast<char>(2);
    Write(root);
    out_ += static_cast<char>(kStop);
    return out_;
  }

 private:
  void Op(uint8_t op) { out_ += static_cast<char>(op); }
  void Raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      Op(kBinInt1);
      out_ += static_cast<char>(v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      Op(kBinInt);
      int32_t x = static_cast<int32_t>(v);
      Raw(&x, 4);
    } else {
      Op(kLong1);
      out_ += static_cast<char>(8);
      Raw(&v, 8);  // little-endian two's complement
    }
  }
  void Str(const std::string& s) {
    Op(kBinUnicode);
    uint32_t n = static_cast<uint32_t>(s.size());
    Raw(&n, 4);
    out_ += s;
  }
  void Global(const char* module, const char* name) {
    Op(kGlobal);
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
  }
  void Write(const PyValue& v) {
    using K = PyValue::Kind;
    switch (v.kind) {
      case K::kNone:
        Op(kNone);
        break;
      case K::kBool:
        Op(v.b ? kNewTrue : kNewFalse);
        break;
      case K::kInt:
        Int(v.i);
        break;
      case K::kFloat: {
        Op(kBinFloat);
        uint64_t bits;
        std::memcpy(&bits, &v.d, 8);
        bits = __builtin_bswap64(bits);  // big-endian on the wire
        Raw(&bits, 8);
        break;
      }
      case K::kString:
        Str(v.s);
        break;
      case K::kTuple:
        Op(kMark);
        for (const auto& item : v.items) Write(*item);
        Op(kTupleOp);
        break;
      case K::kList:
        Op(kEmptyList);
        if (!v.items.empty()) {
          Op(kMark);
          for (const auto& item : v.items) Write(*item);
          Op(kAppends);
        }
        break;
      case K::kDict:
        Op(kEmptyDict);
        if (!v.dict.empty()) {
          Op(kMark);
          for (const auto& [key, value] : v.dict) {
            Write(*key);
            Write(*value);
          }
          Op(kSetItems);
        }
        break;
      case K::kTensor:
        WriteTensor(v.tensor);
        break;
      default:
        break;
    }
  }
  // _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()) with a typed storage
  // ('storage', torch.XStorage, key, 'cpu', numel). Dtypes without a typed storage class
  // (float8) as torch.save writes them: _rebuild_tensor_v3 with an UntypedStorage counted in
  // bytes and the dtype (torch.float8_e4m3fn) as a seventh argument.
  void WriteTensor(const PyTensorRef& t) {
    const std::string typed = StorageClassName(t.dtype);
    const bool v3 = typed.empty();
    Global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    Op(kMark);
    Op(kMark);  // the persistent id
    Str("storage");
    if (v3) {
      Global("torch.storage", "UntypedStorage");
    } else {
      Global("torch", typed.c_str());
    }
    Str(t.storage_key);
    Str("cpu");
    Int(v3 ? t.storage_numel * static_cast<int64_t>(c10::elementSize(t.dtype)) : t.storage_numel);
    Op(kTupleOp);
    Op(kBinPersId);
    Int(t.offset);
    Op(kMark);
    for (int64_t s : t.size) Int(s);
    Op(kTupleOp);
    Op(kMark);
    for (int64_t s : t.stride) Int(s);
    Op(kTupleOp);
    Op(kNewFalse);  // requires_grad
    Global("collections", "OrderedDict");
    Op(kEmptyTuple);
    Op(kReduce);
    if (v3) Global("torch", DtypeName(t.dtype).c_str());
    Op(kTupleOp);
    Op(kReduce);
  }
  std::string out_;
};

class Reader {
 public:
  explicit Reader(const std::string& in, size_t pos = 0, bool objects = false)
      : in_(in), pos_(pos), objects_(objects) {}

  size_t pos() const { return pos_; }
  bool truncated() const { return truncated_; }

  Result<PyPtr> Run() {
    while (true) {
      uint8_t op;
      if (!Byte(&op)) return Truncated();
      Status st = Step(op);
      if (!st.ok()) return st;
      if (op == kStop) break;
    }
    if (stack_.size() != 1)
      return Corrupt("pickle ends with " + std::to_string(stack_.size()) + " values on the stack");
    return stack_.back();
  }

 private:
  Status Truncated() {
    truncated_ = true;
    return Corrupt("pickle data is truncated at byte " + std::to_string(pos_));
  }
  bool Byte(uint8_t* b) {
    if (pos_ >= in_.size()) return false;
    *b = static_cast<uint8_t>(in_[pos_++]);
    return true;
  }
  bool Bytes(void* out, size_t n) {
    if (pos_ + n > in_.size()) return false;
    std::memcpy(out, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool Line(std::string* s) {
    size_t end = in_.find('\n', pos_);
    if (end == std::string::npos) return false;
    *s = in_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return true;
  }
  Result<PyPtr> Pop() {
    if (stack_.empty() || !stack_.back()) return Corrupt("pickle stack underflow");
    PyPtr v = stack_.back();
    stack_.pop_back();
    return v;
  }
  // Pops everything above the last MARK.
  Result<std::vector<PyPtr>> PopMark() {
    std::vector<PyPtr> items;
    while (!stack_.empty() && stack_.back()) {
      items.push_back(stack_.back());
      stack_.pop_back();
    }
    if (stack_.empty()) return Corrupt("pickle MARK missing");
    stack_.pop_back();
    std::reverse(items.begin(), items.end());
    return items;
  }
  Status PushGlobal(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    bool allowed = full == "torch._utils._rebuild_tensor_v2" ||
                   full == "torch._utils._rebuild_tensor_v3" ||
                   full == "torch._utils._rebuild_parameter" || full == "collections.OrderedDict" ||
                   full == "torch.storage.UntypedStorage";
    at::ScalarType dtype;
    if (module == "torch" && DtypeFromName(name, &dtype)) allowed = true;  // torch.float8_e5m2
    if (module == "torch" && FindDtypeByStorageClass(name)) allowed = true;
    if (!allowed && !objects_) {
      return InvalidArgument("refusing to load global '" + full +
                             "': only plain containers, numbers, strings and tensors are "
                             "accepted (no code runs from a .pt file)");
    }
    auto g = std::make_shared<PyValue>();
    g->kind = PyValue::Kind::kGlobal;
    g->s = full;
    stack_.push_back(g);
    return Status::Ok();
  }
  Status Reduce(const PyPtr& callable, const PyPtr& args) {
    using K = PyValue::Kind;
    if (callable->kind != K::kGlobal || args->kind != K::kTuple) {
      return Corrupt("pickle REDUCE on something that is not a global");
    }
    const auto& a = args->items;
    if (objects_ && callable->s == "torch.Size") {
      if (a.size() != 1 || a[0]->kind != K::kTuple) return Corrupt("malformed torch.Size");
      stack_.push_back(a[0]);
      return Status::Ok();
    }
    if (objects_ && callable->s.rfind("torch._utils.", 0) != 0 &&
        callable->s != "collections.OrderedDict") {
      stack_.push_back(Object(callable->s, a));
      return Status::Ok();
    }
    if (callable->s == "collections.OrderedDict") {
      stack_.push_back(PyValue::Dict());
      return Status::Ok();
    }
    if (callable->s == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->kind != K::kTensor) return Corrupt("malformed parameter in pickle");
      stack_.push_back(a[0]);
      return Status::Ok();
    }
    if (callable->s == "torch._utils._rebuild_tensor_v3") return RebuildV3(a);
    if (callable->s == "torch._utils._rebuild_tensor_v2") {
      if (a.size() < 4 || a[0]->kind != K::kStorage || a[1]->kind != K::kInt ||
          a[2]->kind != K::kTuple || a[3]->kind != K::kTuple) {
        return Corrupt("malformed tensor in pickle");
      }
      PyTensorRef ref = a[0]->tensor;
      ref.offset += a[1]->i;  // a legacy storage view starts inside its storage
      for (const auto& x : a[2]->items) {
        if (x->kind != K::kInt) return Corrupt("malformed tensor size in pickle");
        ref.size.push_back(x->i);
      }
      for (const auto& x : a[3]->items) {
        if (x->kind != K::kInt) return Corrupt("malformed tensor stride in pickle");
        ref.stride.push_back(x->i);
      }
      if (ref.size.size() != ref.stride.size()) return Corrupt("tensor size and stride differ");
      stack_.push_back(PyValue::Tensor(ref));
      return Status::Ok();
    }
    return InvalidArgument("refusing to call global '" + callable->s + "'");
  }
  // _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype): the storage
  // is untyped (its count in bytes) and the dtype a global such as torch.float8_e4m3fn.
  Status RebuildV3(const std::vector<PyPtr>& a) {
    using K = PyValue::Kind;
    at::ScalarType dtype;
    if (a.size() < 7 || a[0]->kind != K::kStorage || a[6]->kind != K::kGlobal ||
        a[6]->s.rfind("torch.", 0) != 0 || !DtypeFromName(a[6]->s.substr(6), &dtype)) {
      return Corrupt("malformed tensor (_rebuild_tensor_v3) in pickle");
    }
    PyTensorRef& storage = a[0]->tensor;
    if (storage.dtype == at::kByte && dtype != at::kByte) {  // bytes to elements, once
      const int64_t esize = static_cast<int64_t>(c10::elementSize(dtype));
      if (storage.storage_numel % esize) return Corrupt("untyped storage of a partial element");
      storage.storage_numel /= esize;
      storage.dtype = dtype;
    }
    if (storage.dtype != dtype) return Corrupt("one storage read as two dtypes");
    std::vector<PyPtr> v2(a.begin(), a.begin() + 4);
    return Reduce(GlobalValue("torch._utils._rebuild_tensor_v2"), PyValue::Tuple(std::move(v2)));
  }
  static PyPtr Object(const std::string& cls, std::vector<PyPtr> args) {
    auto o = std::make_shared<PyValue>();
    o->kind = PyValue::Kind::kObject;
    o->s = cls;
    o->items = std::move(args);
    return o;
  }
  // NEWOBJ / NEWOBJ_EX: an instance of `cls`, recorded (objects mode only).
  Status NewObject(const PyPtr& cls, const PyPtr& args) {
    if (!objects_) return InvalidArgument("refusing to create an object from a pickle");
    if (cls->kind != PyValue::Kind::kGlobal || args->kind != PyValue::Kind::kTuple) {
      return Corrupt("pickle NEWOBJ on something that is not a class");
    }
    stack_.push_back(Object(cls->s, args->items));
    return Status::Ok();
  }
  // BUILD: an object's state is a dict of attributes, (None, slots) or (dict, slots) for
  // classes with __slots__, or whatever __getstate__ returned (kept in items).
  Status Build(const PyPtr& state) {
    if (stack_.empty() || !stack_.back()) return Corrupt("pickle BUILD without an object");
    PyValue& target = *stack_.back();
    if (!objects_ || target.kind != PyValue::Kind::kObject) return Status::Ok();  // dropped
    using K = PyValue::Kind;
    if (state->kind == K::kTuple && state->items.size() == 2 &&
        (state->items[0]->kind == K::kNone || state->items[0]->kind == K::kDict) &&
        state->items[1]->kind == K::kDict) {
      for (const PyPtr& part : state->items) {
        for (const auto& kv : part->dict) target.dict.push_back(kv);
      }
    } else if (state->kind == K::kDict) {
      for (const auto& kv : state->dict) target.dict.push_back(kv);
    } else {
      target.items = state->kind == K::kTuple ? state->items : std::vector<PyPtr>{state};
    }
    return Status::Ok();
  }
  static PyPtr GlobalValue(const std::string& full) {
    auto g = std::make_shared<PyValue>();
    g->kind = PyValue::Kind::kGlobal;
    g->s = full;
    return g;
  }
  Status PersistentLoad(const PyPtr& pid) {
    using K = PyValue::Kind;
    const auto& a = pid->items;
    // Zip format: ('storage', type, key, location, numel); the legacy format adds view
    // metadata: None, or (view key, element offset, elements) for a view of storage `key`.
    // The location (e.g. 'cuda:0') is ignored: every storage is read onto the CPU.
    if (pid->kind != K::kTuple || (a.size() != 5 && a.size() != 6) || a[0]->kind != K::kString ||
        a[0]->s != "storage" || a[1]->kind != K::kGlobal || a[2]->kind != K::kString ||
        a[4]->kind != K::kInt) {
      return Corrupt("unsupported persistent id in pickle");
    }
    int64_t view_offset = 0;
    if (a.size() == 6 && a[5]->kind != K::kNone) {
      const auto& view = a[5]->items;
      if (a[5]->kind != K::kTuple || view.size() != 3 || view[1]->kind != K::kInt) {
        return Corrupt("malformed storage view in pickle");
      }
      view_offset = view[1]->i;
    }
    auto storage = std::make_shared<PyValue>();
    storage->kind = K::kStorage;
    bool found = a[1]->s == "torch.storage.UntypedStorage";  // bytes; typed by its tensor
    storage->tensor.dtype = at::kByte;
    const std::string& cls = a[1]->s;
    const DtypeInfo* d =
        cls.rfind("torch.", 0) == 0 ? FindDtypeByStorageClass(cls.substr(6)) : nullptr;
    if (d) {
      storage->tensor.dtype = d->dtype;
      found = true;
    }
    if (!found) return InvalidArgument("unsupported storage type '" + a[1]->s + "'");
    storage->tensor.storage_key = a[2]->s;
    storage->tensor.storage_numel = a[4]->i;
    storage->tensor.offset = view_offset;
    stack_.push_back(storage);
    return Status::Ok();
  }
  Status SetItems(std::vector<PyPtr> kv) {
    if (stack_.empty() || !stack_.back() || stack_.back()->kind != PyValue::Kind::kDict) {
      return Corrupt("pickle SETITEMS without a dict");
    }
    if (kv.size() % 2) return Corrupt("pickle SETITEMS with an odd number of values");
    for (size_t i = 0; i < kv.size(); i += 2) stack_.back()->dict.emplace_back(kv[i], kv[i + 1]);
    return Status::Ok();
  }
  Status Appends(std::vector<PyPtr> items) {
    if (stack_.empty() || !stack_.back() || stack_.back()->kind != PyValue::Kind::kList) {
      return Corrupt("pickle APPENDS without a list");
    }
    for (auto& x : items) stack_.back()->items.push_back(x);
    return Status::Ok();
  }
  Status Memo(uint32_t index) {
    if (stack_.empty() || !stack_.back()) return Corrupt("pickle PUT on an empty stack");
    memo_[index] = stack_.back();
    return Status::Ok();
  }
  Status Get(uint32_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Corrupt("pickle GET of unknown memo " + std::to_string(index));
    stack_.push_back(it->second);
    return Status::Ok();
  }

  Status Step(uint8_t op) {
#define NEED(expr) \
  if (!(expr)) return Truncated()
    switch (op) {
      case kProto: {
        uint8_t v;
        NEED(Byte(&v));
        return Status::Ok();
      }
      case kFrame: {
        uint64_t n;
        NEED(Bytes(&n, 8));
        return Status::Ok();
      }
      case kStop:
        return Status::Ok();
      case kMark:
        stack_.push_back(nullptr);
        return Status::Ok();
      case kNone:
        stack_.push_back(PyValue::None());
        return Status::Ok();
      case kNewTrue:
        stack_.push_back(PyValue::Bool(true));
        return Status::Ok();
      case kNewFalse:
        stack_.push_back(PyValue::Bool(false));
        return Status::Ok();
      case kBinInt1: {
        uint8_t v;
        NEED(Byte(&v));
        stack_.push_back(PyValue::Int(v));
        return Status::Ok();
      }
      case kBinInt2: {
        uint16_t v;
        NEED(Bytes(&v, 2));
        stack_.push_back(PyValue::Int(v));
        return Status::Ok();
      }
      case kBinInt: {
        int32_t v;
        NEED(Bytes(&v, 4));
        stack_.push_back(PyValue::Int(v));
        return Status::Ok();
      }
      case kLong1: {
        uint8_t n;
        NEED(Byte(&n));
        if (n > 8) return InvalidArgument("integer wider than 64 bits in pickle");
        uint8_t bytes[8] = {0};
        NEED(Bytes(bytes, n));
        int64_t v = 0;
        for (int k = n - 1; k >= 0; --k) v = (v << 8) | bytes[k];
        if (n > 0 && n < 8 && (bytes[n - 1] & 0x80)) v -= int64_t{1} << (8 * n);  // sign
        stack_.push_back(PyValue::Int(v));
        return Status::Ok();
      }
      case kBinFloat: {
        uint64_t bits;
        NEED(Bytes(&bits, 8));
        bits = __builtin_bswap64(bits);
        double d;
        std::memcpy(&d, &bits, 8);
        stack_.push_back(PyValue::Float(d));
        return Status::Ok();
      }
      case kBinUnicode:
      case kShortBinUnicode:
      case kBinUnicode8:
      case kBinBytes:  // bytes, read as a string
      case kShortBinBytes: {
        uint64_t n = 0;
        if (op == kShortBinUnicode || op == kShortBinBytes) {
          uint8_t b;
          NEED(Byte(&b));
          n = b;
        } else {
          NEED(Bytes(&n, op == kBinUnicode8 ? 8 : 4));
        }
        NEED(pos_ + n <= in_.size());
        stack_.push_back(PyValue::Str(in_.substr(pos_, n)));
        pos_ += n;
        return Status::Ok();
      }
      case kEmptyDict:
        stack_.push_back(PyValue::Dict());
        return Status::Ok();
      case kEmptyList:
        stack_.push_back(PyValue::List({}));
        return Status::Ok();
      case kEmptyTuple:
        stack_.push_back(PyValue::Tuple({}));
        return Status::Ok();
      case kTupleOp: {
        ASSIGN_OR_RETURN(auto items, PopMark());
        stack_.push_back(PyValue::Tuple(std::move(items)));
        return Status::Ok();
      }
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        size_t n = op - kTuple1 + 1;
        std::vector<PyPtr> items(n);
        for (size_t k = n; k-- > 0;) {
          ASSIGN_OR_RETURN(items[k], Pop());
        }
        stack_.push_back(PyValue::Tuple(std::move(items)));
        return Status::Ok();
      }
      case kSetItem: {
        ASSIGN_OR_RETURN(auto value, Pop());
        ASSIGN_OR_RETURN(auto key, Pop());
        return SetItems({key, value});
      }
      case kSetItems: {
        ASSIGN_OR_RETURN(auto kv, PopMark());
        return SetItems(std::move(kv));
      }
      case kAppend: {
        ASSIGN_OR_RETURN(auto value, Pop());
        return Appends({value});
      }
      case kAppends: {
        ASSIGN_OR_RETURN(auto items, PopMark());
        return Appends(std::move(items));
      }
      case kBinPut: {
        uint8_t i;
        NEED(Byte(&i));
        return Memo(i);
      }
      case kLongBinPut: {
        uint32_t i;
        NEED(Bytes(&i, 4));
        return Memo(i);
      }
      case kMemoize:
        return Memo(static_cast<uint32_t>(memo_.size()));
      case kBinGet: {
        uint8_t i;
        NEED(Byte(&i));
        return Get(i);
      }
      case kLongBinGet: {
        uint32_t i;
        NEED(Bytes(&i, 4));
        return Get(i);
      }
      case kGlobal: {
        std::string module, name;
        NEED(Line(&module) && Line(&name));
        return PushGlobal(module, name);
      }
      case kStackGlobal: {
        ASSIGN_OR_RETURN(auto name, Pop());
        ASSIGN_OR_RETURN(auto module, Pop());
        if (name->kind != PyValue::Kind::kString || module->kind != PyValue::Kind::kString) {
          return Corrupt("malformed STACK_GLOBAL in pickle");
        }
        return PushGlobal(module->s, name->s);
      }
      case kReduce: {
        ASSIGN_OR_RETURN(auto args, Pop());
        ASSIGN_OR_RETURN(auto callable, Pop());
        return Reduce(callable, args);
      }
      case kBinPersId: {
        ASSIGN_OR_RETURN(auto pid, Pop());
        return PersistentLoad(pid);
      }
      case kBuild: {
        // OrderedDict state (e.g. a state_dict's _metadata): not needed, dropped.
        ASSIGN_OR_RETURN(auto state, Pop());
        return Build(state);
      }
      case kNewObj: {
        ASSIGN_OR_RETURN(auto args, Pop());
        ASSIGN_OR_RETURN(auto cls, Pop());
        return NewObject(cls, args);
      }
      case kNewObjEx: {
        ASSIGN_OR_RETURN(auto kwargs, Pop());
        ASSIGN_OR_RETURN(auto args, Pop());
        ASSIGN_OR_RETURN(auto cls, Pop());
        return NewObject(cls, args);
      }
      case kEmptySet:
        stack_.push_back(PyValue::List({}));  // a set, read as a list
        return Status::Ok();
      case kAddItems: {
        ASSIGN_OR_RETURN(auto items, PopMark());
        return Appends(std::move(items));
      }
      case kFrozenSet: {
        ASSIGN_OR_RETURN(auto items, PopMark());
        stack_.push_back(PyValue::List(std::move(items)));
        return Status::Ok();
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02x", op);
        return InvalidArgument(std::string("unsupported pickle opcode ") + hex + " at byte " +
                               std::to_string(pos_ - 1));
      }
    }
#undef NEED
  }

  const std::string& in_;
  size_t pos_ = 0;
  bool objects_ = false;  // UnpickleObjects: any class recorded by name
  bool truncated_ = false;
  std::vector<PyPtr> stack_;  // nullptr marks a MARK
  std::map<uint32_t, PyPtr> memo_;
};

}  // namespace

std::string StorageClassName(at::ScalarType dtype) {
  const DtypeInfo* d = FindDtype(dtype);
  return d && d->storage_class ? d->storage_class : "";
}

std::string Pickle(const PyValue& root) { return Writer().Finish(root); }

Result<PyPtr> Unpickle(const std::string& bytes) { return Reader(bytes).Run(); }

Result<PyPtr> UnpickleObjects(const std::string& bytes) { return Reader(bytes, 0, true).Run(); }

Result<PyPtr> Unpickle(const std::string& bytes, size_t* pos, bool* truncated) {
  Reader reader(bytes, *pos);
  Result<PyPtr> value = reader.Run();
  *pos = reader.pos();
  if (truncated) *truncated = reader.truncated();
  return value;
}

}  // namespace distckpt
