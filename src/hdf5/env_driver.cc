#include "hdf5/env_driver.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "core/status_macros.h"

namespace distckpt {
namespace {

struct DriverInfo {
  Env* env;
  EnvDriverErrors* errors;
};

struct EnvFile {
  H5FD_t pub;  // must come first: HDF5 sees this part
  DriverInfo info;
  std::string path;
  std::unique_ptr<WritableFile> writer;  // null for read-only opens
  std::unique_ptr<ReadableFile> reader;
  haddr_t eoa = 0;
  haddr_t eof = 0;
  // After a failed write the file is lost: the caller reports the first error (EnvDriverErrors)
  // and removes the file. HDF5 is not told: a write that fails inside H5Fclose leaves HDF5 1.10
  // with a half-closed file that it closes again at MPI_Finalize, through an Env gone by then.
  bool lost = false;
};

EnvFile* Cast(H5FD_t* f) { return reinterpret_cast<EnvFile*>(f); }
const EnvFile* Cast(const H5FD_t* f) { return reinterpret_cast<const EnvFile*>(f); }

// Keeps the first error for the caller; HDF5 only learns that the call failed.
herr_t Fail(const DriverInfo& info, const Status& status) {
  if (info.errors && info.errors->first.ok()) info.errors->first = status;
  return -1;
}

// A failed write or truncate: the file is lost from here on (see EnvFile::lost).
herr_t Lose(EnvFile* file, const Status& status) {
  file->lost = true;
  Fail(file->info, status);
  return 0;
}

Status OpenFiles(EnvFile* file, unsigned flags) {
  Env* env = file->info.env;
  if (flags & (H5F_ACC_TRUNC | H5F_ACC_CREAT)) {
    ASSIGN_OR_RETURN(file->writer, env->NewWritable(file->path));
  } else if (flags & H5F_ACC_RDWR) {
    ASSIGN_OR_RETURN(file->writer, env->OpenWritable(file->path));
  }
  ASSIGN_OR_RETURN(file->reader, env->OpenReadable(file->path));
  ASSIGN_OR_RETURN(uint64_t size, file->reader->Size());
  file->eof = static_cast<haddr_t>(size);
  return Status::Ok();
}

H5FD_t* Open(const char* name, unsigned flags, hid_t fapl, haddr_t /*maxaddr*/) {
  const auto* info = static_cast<const DriverInfo*>(H5Pget_driver_info(fapl));
  if (!info) return nullptr;
  auto file = std::make_unique<EnvFile>();
  std::memset(&file->pub, 0, sizeof(file->pub));
  file->info = *info;
  file->path = name;
  Status st = OpenFiles(file.get(), flags);
  if (!st.ok()) {
    Fail(*info, st);
    return nullptr;
  }
  return &file.release()->pub;
}

// Always succeeds for HDF5 (the file is freed either way); a failed close is reported through
// EnvDriverErrors.
herr_t Close(H5FD_t* f) {
  std::unique_ptr<EnvFile> file(Cast(f));
  Status st = file->writer ? file->writer->Close() : Status::Ok();
  if (!st.ok()) Fail(file->info, st);
  return 0;
}

herr_t Query(const H5FD_t*, unsigned long* flags) {
  // As HDF5's POSIX driver: metadata and small raw data are gathered into few, larger writes.
  *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_DATA_SIEVE |
           H5FD_FEAT_AGGREGATE_SMALLDATA;
  return 0;
}

haddr_t GetEoa(const H5FD_t* f, H5FD_mem_t) { return Cast(f)->eoa; }

herr_t SetEoa(H5FD_t* f, H5FD_mem_t, haddr_t addr) {
  Cast(f)->eoa = addr;
  return 0;
}

haddr_t GetEof(const H5FD_t* f, H5FD_mem_t) { return Cast(f)->eof; }

herr_t Read(H5FD_t* f, H5FD_mem_t, hid_t, haddr_t addr, size_t size, void* buf) {
  EnvFile* file = Cast(f);
  // Bytes past the end of the file read as zeros, as with HDF5's POSIX driver.
  const size_t present = addr >= file->eof ? 0 : std::min<size_t>(size, file->eof - addr);
  if (present > 0) {
    Status st = file->reader->PRead(addr, buf, present);
    if (!st.ok()) return Fail(file->info, st);
  }
  std::memset(static_cast<char*>(buf) + present, 0, size - present);
  return 0;
}

herr_t Write(H5FD_t* f, H5FD_mem_t, hid_t, haddr_t addr, size_t size, const void* buf) {
  EnvFile* file = Cast(f);
  if (!file->writer) return Fail(file->info, IoError("'" + file->path + "' is open read-only"));
  if (file->lost) return 0;
  Status st = file->writer->PWrite(addr, buf, size);
  if (!st.ok()) return Lose(file, st);
  file->eof = std::max<haddr_t>(file->eof, addr + size);
  return 0;
}

// Makes the file's size its end of allocated space (early-allocated datasets not yet written).
herr_t Truncate(H5FD_t* f, hid_t, hbool_t) {
  EnvFile* file = Cast(f);
  if (!file->writer || file->lost || file->eoa == file->eof) return 0;
  Status st = file->writer->Truncate(file->eoa);
  if (!st.ok()) return Lose(file, st);
  file->eof = file->eoa;
  return 0;
}

void* FaplCopy(const void* info) { return new DriverInfo(*static_cast<const DriverInfo*>(info)); }

herr_t FaplFree(void* info) {
  delete static_cast<DriverInfo*>(info);
  return 0;
}

H5FD_class_t MakeClass() {
  H5FD_class_t c;
  std::memset(&c, 0, sizeof(c));
  c.name = "distckpt_env";
  c.maxaddr = static_cast<haddr_t>(INT64_MAX);
  c.fc_degree = H5F_CLOSE_WEAK;
  c.fapl_size = sizeof(DriverInfo);
  c.fapl_copy = FaplCopy;
  c.fapl_free = FaplFree;
  c.open = Open;
  c.close = Close;
  c.query = Query;
  c.get_eoa = GetEoa;
  c.set_eoa = SetEoa;
  c.get_eof = GetEof;
  c.read = Read;
  c.write = Write;
  c.truncate = Truncate;
  const H5FD_mem_t map[] = H5FD_FLMAP_DICHOTOMY;
  std::copy(std::begin(map), std::end(map), c.fl_map);
  return c;
}

hid_t DriverId() {
  static const H5FD_class_t cls = MakeClass();
  static const hid_t id = H5FDregister(&cls);
  return id;
}

}  // namespace

hid_t MakeEnvFapl(Env* env, EnvDriverErrors* errors) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  const DriverInfo info{env, errors};
  H5Pset_driver(fapl, DriverId(), &info);
  return fapl;
}

}  // namespace distckpt
