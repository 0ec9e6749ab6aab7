// The one table of the dtypes a checkpoint holds, with every name each format gives them: the
// checkpoint's own (manifest, HDF5 attribute, torch.<name> in pickles), safetensors' code,
// torch.save's legacy storage class, and how the HDF5 datasets store them.
#pragma once

#include <c10/core/ScalarType.h>

#include <string>

namespace distckpt {

// How a rank file's dataset stores the dtype (src/hdf5 turns it into an HDF5 type).
enum class Hdf5Storage {
  kIeeeF32,
  kIeeeF64,
  kFloat16,   // 2-byte IEEE float, 10 mantissa bits
  kBFloat16,  // 2-byte float, 7 mantissa bits (the upper half of a float32)
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUint8,     // uint8, and float8 as raw bytes (HDF5 has no matching float type)
  kBoolEnum,  // enum of int8 {FALSE = 0, TRUE = 1}
};

struct DtypeInfo {
  at::ScalarType dtype;
  const char* name;              // "float32": manifest, torch_dtype attribute, torch.<name>
  const char* safetensors_code;  // "F32"
  const char* storage_class;     // "FloatStorage" (torch.save); nullptr: none
  Hdf5Storage hdf5;
};

// The entry of `dtype`, or nullptr when checkpoints cannot hold it.
const DtypeInfo* FindDtype(at::ScalarType dtype);
// The entry with that name, safetensors code or storage class, or nullptr.
const DtypeInfo* FindDtypeByName(const std::string& name);
const DtypeInfo* FindDtypeBySafetensorsCode(const std::string& code);
const DtypeInfo* FindDtypeByStorageClass(const std::string& storage_class);

}  // namespace distckpt
