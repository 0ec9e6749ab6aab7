#include "core/dtype.h"

namespace distckpt {
namespace {

constexpr DtypeInfo kDtypes[] = {
    {at::kFloat, "float32", "F32", "FloatStorage", Hdf5Storage::kIeeeF32},
    {at::kDouble, "float64", "F64", "DoubleStorage", Hdf5Storage::kIeeeF64},
    {at::kHalf, "float16", "F16", "HalfStorage", Hdf5Storage::kFloat16},
    {at::kBFloat16, "bfloat16", "BF16", "BFloat16Storage", Hdf5Storage::kBFloat16},
    {at::kChar, "int8", "I8", "CharStorage", Hdf5Storage::kInt8},
    {at::kShort, "int16", "I16", "ShortStorage", Hdf5Storage::kInt16},
    {at::kInt, "int32", "I32", "IntStorage", Hdf5Storage::kInt32},
    {at::kLong, "int64", "I64", "LongStorage", Hdf5Storage::kInt64},
    {at::kByte, "uint8", "U8", "ByteStorage", Hdf5Storage::kUint8},
    {at::kBool, "bool", "BOOL", "BoolStorage", Hdf5Storage::kBoolEnum},
    {at::kFloat8_e4m3fn, "float8_e4m3fn", "F8_E4M3", nullptr, Hdf5Storage::kUint8},
    {at::kFloat8_e5m2, "float8_e5m2", "F8_E5M2", nullptr, Hdf5Storage::kUint8},
};

template <typename Match>
const DtypeInfo* Find(Match match) {
  for (const DtypeInfo& d : kDtypes) {
    if (match(d)) return &d;
  }
  return nullptr;
}

bool Same(const char* field, const std::string& value) { return field && value == field; }

}  // namespace

const DtypeInfo* FindDtype(at::ScalarType dtype) {
  return Find([&](const DtypeInfo& d) { return d.dtype == dtype; });
}
const DtypeInfo* FindDtypeByName(const std::string& name) {
  return Find([&](const DtypeInfo& d) { return Same(d.name, name); });
}
const DtypeInfo* FindDtypeBySafetensorsCode(const std::string& code) {
  return Find([&](const DtypeInfo& d) { return Same(d.safetensors_code, code); });
}
const DtypeInfo* FindDtypeByStorageClass(const std::string& storage_class) {
  return Find([&](const DtypeInfo& d) { return Same(d.storage_class, storage_class); });
}

}  // namespace distckpt
