#include "hdf5/rank_file.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>

#include "core/dtype.h"
#include "core/status_macros.h"
#include "distckpt/tree.h"
#include "hdf5/env_driver.h"

namespace distckpt {

void QuietHdf5Errors() {
  static const bool once = [] {
    // HDF5 1.10 crashes at exit when it closes a file whose writes failed (EFBIG, ENOSPC);
    // every file distckpt opens is closed explicitly, so skip that exit pass.
    H5dont_atexit();
    return true;
  }();
  (void)once;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

namespace {

// A 2-byte IEEE-style float (sign bit 15) that h5py reads: float16 or bfloat16.
// The order matters: shrink the precision before the size.
hid_t TwoByteFloat(size_t mantissa_bits, size_t exponent_bits, size_t bias) {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, mantissa_bits, exponent_bits, 0, mantissa_bits);
  H5Tset_offset(t, 0);
  H5Tset_precision(t, 16);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, bias);
  return t;
}

}  // namespace

hid_t MakeHdf5Type(at::ScalarType dtype) {
  const DtypeInfo* d = FindDtype(dtype);
  if (!d) return H5I_INVALID_HID;
  switch (d->hdf5) {
    case Hdf5Storage::kIeeeF32:
      return H5Tcopy(H5T_IEEE_F32LE);
    case Hdf5Storage::kIeeeF64:
      return H5Tcopy(H5T_IEEE_F64LE);
    case Hdf5Storage::kFloat16:
      return TwoByteFloat(10, 5, 15);
    case Hdf5Storage::kBFloat16:
      return TwoByteFloat(7, 8, 127);
    case Hdf5Storage::kInt8:
      return H5Tcopy(H5T_STD_I8LE);
    case Hdf5Storage::kInt16:
      return H5Tcopy(H5T_STD_I16LE);
    case Hdf5Storage::kInt32:
      return H5Tcopy(H5T_STD_I32LE);
    case Hdf5Storage::kInt64:
      return H5Tcopy(H5T_STD_I64LE);
    case Hdf5Storage::kUint8:
      // float8 too: HDF5 has no type whose special values match, so h5py reads the raw bytes;
      // the dataset's torch_dtype attribute names the type.
      return H5Tcopy(H5T_STD_U8LE);
    case Hdf5Storage::kBoolEnum: {
      hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
      int8_t no = 0, yes = 1;
      H5Tenum_insert(t, "FALSE", &no);
      H5Tenum_insert(t, "TRUE", &yes);
      return t;
    }
  }
  return H5I_INVALID_HID;
}

namespace {

// Closes an HDF5 handle when it goes out of scope.
class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

Status WriteStringAttribute(hid_t obj, const char* name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), value.size() + 1);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), value.c_str()) < 0) {
    return IoError(std::string("cannot write attribute '") + name + "'");
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<uint64_t>> CreateRankFile(Env* env, const std::string& path,
                                             const std::vector<DatasetRequest>& datasets) {
  QuietHdf5Errors();
  // HDF5 1.10 cannot recover from a failed flush (it crashes later, at MPI_Finalize), so a
  // file-size limit the file cannot fit in is reported before HDF5 writes anything.
  uint64_t data_bytes = 0;
  for (const DatasetRequest& d : datasets) {
    uint64_t n = c10::elementSize(d.dtype);
    for (int64_t x : d.shape) n *= static_cast<uint64_t>(x);
    data_bytes += n;
  }
  struct rlimit limit;
  const uint64_t estimate = data_bytes + (uint64_t{64} << 10) + 2048 * datasets.size();
  if (getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
      estimate > limit.rlim_cur) {
    return IoError("cannot write '" + path + "': " + std::strerror(EFBIG) + " (it needs about " +
                   std::to_string(estimate) + " bytes; the file-size limit is " +
                   std::to_string(limit.rlim_cur) + ")");
  }
  std::vector<uint64_t> offsets;
  EnvDriverErrors errors;
  Status status = Status::Ok();
  {
    Handle fapl(MakeEnvFapl(env, &errors), H5Pclose);
    Handle file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
    if (!file.valid()) {
      if (!errors.first.ok()) return errors.first;
      return IoError("cannot create HDF5 file '" + path + "'");
    }
    Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_create_intermediate_group(lcpl.get(), 1);
    Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
    for (const DatasetRequest& d : datasets) {
      std::string where = "dataset '" + d.name + "' in '" + path + "'";
      Handle type(MakeHdf5Type(d.dtype), H5Tclose);
      if (!type.valid()) return InvalidArgument(where + ": unsupported dtype");
      std::vector<hsize_t> dims(d.shape.begin(), d.shape.end());
      Handle space(d.shape.empty()
                       ? H5Screate(H5S_SCALAR)
                       : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                   H5Sclose);
      Handle ds(H5Dcreate2(file.get(), d.name.c_str(), type.get(), space.get(), lcpl.get(),
                           dcpl.get(), H5P_DEFAULT),
                H5Dclose);
      if (!ds.valid()) {
        if (!errors.first.ok()) return errors.first.Annotate(where);
        return IoError(where + ": cannot create");
      }
      RETURN_IF_ERROR(
          WriteStringAttribute(ds.get(), "torch_dtype", DtypeName(d.dtype)).Annotate(where));
      haddr_t offset = H5Dget_offset(ds.get());
      if (offset == HADDR_UNDEF) return IoError(where + ": no data offset after allocation");
      offsets.push_back(static_cast<uint64_t>(offset));
    }
    if (H5Fflush(file.get(), H5F_SCOPE_LOCAL) < 0) {
      status = IoError("cannot write the HDF5 metadata of '" + path + "'");
    }
  }  // H5Fclose: truncates to the allocated size and closes through the Env
  if (!errors.first.ok()) return errors.first;
  RETURN_IF_ERROR(status);
  return offsets;
}

}  // namespace distckpt
