#include "hdf5/manifest_file.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>

#include "core/checksum.h"
#include "core/status_macros.h"
#include "hdf5/rank_file.h"

namespace distckpt {

namespace {

constexpr char kIndexDataset[] = "/_distckpt/index";
constexpr char kPackedTable[] = "/_distckpt/packed";

template <typename T>
void WriteAttribute(hid_t obj, const char* name, hid_t type, const T& value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, type, &value);
  H5Aclose(attr);
  H5Sclose(space);
}

void WriteStringAttr(hid_t obj, const char* name, const std::string& value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, value.size() + 1);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, type, value.c_str());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

// Cuts flat elements [start, start + count) of a row-major tensor of `shape` into regular
// blocks (at most two per dimension), each one HDF5 hyperslab. Calls fn(block_start,
// block_count, offset of the block within the range).
template <typename Fn>
void ForEachBlock(const std::vector<int64_t>& shape, int64_t start, int64_t count, Fn&& fn) {
  const size_t n = shape.size();
  std::vector<int64_t> stride(n, 1);
  for (size_t d = n - 1; d-- > 0;) stride[d] = stride[d + 1] * shape[d + 1];
  int64_t pos = start;
  const int64_t end = start + count;
  while (pos < end) {
    size_t level = n - 1;
    for (size_t d = 0; d < n; ++d) {
      if (pos % stride[d] == 0 && pos + stride[d] <= end) {
        level = d;
        break;
      }
    }
    std::vector<hsize_t> block_start(n), block_count(n, 1);
    int64_t rest = pos;
    for (size_t d = 0; d < n; ++d) {
      block_start[d] = static_cast<hsize_t>(rest / stride[d]);
      rest %= stride[d];
    }
    const int64_t along = std::min<int64_t>(
        (end - pos) / stride[level], shape[level] - static_cast<int64_t>(block_start[level]));
    block_count[level] = static_cast<hsize_t>(along);
    for (size_t d = level + 1; d < n; ++d) block_count[d] = static_cast<hsize_t>(shape[d]);
    fn(block_start, block_count, pos - start);
    pos += along * stride[level];
  }
}

bool HasPackedShard(const TensorRecord& t) {
  for (const ShardRecord& s : t.shards) {
    if (s.packed) return true;
  }
  return false;
}

// A virtual dataset per tensor that stitches its shards from the rank files, so that
// h5py.File("manifest.h5")["model_state_dict/w"][...] is the whole tensor. 0-d tensors, empty
// tensors and tensors in packs are left out: HDF5 maps no scalar or empty selections, and a
// virtual dataset costs about a kilobyte, more than a small tensor (those are listed in the
// packed table instead).
Status WriteVirtualDatasets(hid_t file, const Manifest& m) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  Status status;
  for (const TensorRecord& t : m.tensors) {
    if (t.global_shape.empty() || t.numel() == 0 || HasPackedShard(t)) continue;
    const int rank = static_cast<int>(t.global_shape.size());
    std::vector<hsize_t> dims(t.global_shape.begin(), t.global_shape.end());
    hid_t vspace = H5Screate_simple(rank, dims.data(), nullptr);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    for (const ShardRecord& s : t.shards) {
      std::vector<hsize_t> sdims(s.stored_shape.begin(), s.stored_shape.end());
      const bool flat_source = s.stored_shape.size() == 1;
      ForEachBlock(
          t.global_shape, s.flat_start, s.flat_count,
          [&](const std::vector<hsize_t>& start, const std::vector<hsize_t>& count,
              int64_t offset) {
            H5Sselect_hyperslab(vspace, H5S_SELECT_SET, start.data(), nullptr, count.data(),
                                nullptr);
            hid_t sspace = H5Screate_simple(static_cast<int>(sdims.size()), sdims.data(), nullptr);
            if (flat_source) {
              hsize_t src_start = static_cast<hsize_t>(offset);
              hsize_t src_count = 1;
              for (hsize_t c : count) src_count *= c;
              H5Sselect_hyperslab(sspace, H5S_SELECT_SET, &src_start, nullptr, &src_count, nullptr);
            }  // else a row-aligned shard is one block: the whole source dataset
            if (H5Pset_virtual(dcpl, vspace, s.file.c_str(), s.dataset.c_str(), sspace) < 0) {
              status = IoError("cannot map shard of '" + t.path + "' in " + s.file);
            }
            H5Sclose(sspace);
          });
    }
    H5Sselect_all(vspace);
    hid_t type = MakeHdf5Type(t.dtype);
    hid_t ds = H5Dcreate2(file, t.path.c_str(), type, vspace, lcpl, dcpl, H5P_DEFAULT);
    if (ds < 0) {
      status = IoError("cannot create the virtual dataset '" + t.path + "'");
    } else {
      H5Dclose(ds);
    }
    H5Tclose(type);
    H5Pclose(dcpl);
    H5Sclose(vspace);
    if (!status.ok()) break;
  }
  H5Pclose(lcpl);
  return status;
}

// One row of the packed table.
struct PackedRow {
  const TensorRecord* tensor;
  const ShardRecord* shard;
  std::string shape;  // the tensor's global shape as JSON, e.g. "[2, 3]"
};

hid_t FixedString(size_t width) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, std::max<size_t>(width, 1));
  H5Tset_strpad(t, H5T_STR_NULLPAD);
  return t;
}

// The table /_distckpt/packed (compressed), one row per packed shard: path, file, dataset,
// pack_start, count, flat_start, shape. h5py reads a packed tensor as
// File(file)[dataset][pack_start:pack_start + count], its shards put in flat_start order and
// reshaped to `shape`.
Status WritePackedTable(hid_t file, const Manifest& m) {
  std::vector<PackedRow> rows;
  size_t widths[4] = {1, 1, 1, 1};
  for (const TensorRecord& t : m.tensors) {
    for (const ShardRecord& s : t.shards) {
      if (!s.packed) continue;
      std::string shape = "[";
      for (size_t d = 0; d < t.global_shape.size(); ++d) {
        shape += (d ? ", " : "") + std::to_string(t.global_shape[d]);
      }
      rows.push_back({&t, &s, shape + "]"});
      widths[0] = std::max(widths[0], t.path.size());
      widths[1] = std::max(widths[1], s.file.size());
      widths[2] = std::max(widths[2], s.dataset.size());
      widths[3] = std::max(widths[3], rows.back().shape.size());
    }
  }
  if (rows.empty()) return Status::Ok();
  const size_t offsets[] = {0, widths[0], widths[0] + widths[1], widths[0] + widths[1] + widths[2]};
  const size_t ints = offsets[3] + widths[3];
  const size_t row_size = ints + 3 * sizeof(int64_t);
  hid_t type = H5Tcreate(H5T_COMPOUND, row_size);
  const char* names[] = {"path", "file", "dataset", "shape"};
  for (int i = 0; i < 4; ++i) {
    hid_t str = FixedString(widths[i]);
    H5Tinsert(type, names[i], offsets[i], str);
    H5Tclose(str);
  }
  H5Tinsert(type, "pack_start", ints, H5T_STD_I64LE);
  H5Tinsert(type, "count", ints + 8, H5T_STD_I64LE);
  H5Tinsert(type, "flat_start", ints + 16, H5T_STD_I64LE);
  std::vector<char> buffer(rows.size() * row_size, '\0');
  for (size_t r = 0; r < rows.size(); ++r) {
    char* row = buffer.data() + r * row_size;
    const std::string* text[] = {&rows[r].tensor->path, &rows[r].shard->file,
                                 &rows[r].shard->dataset, &rows[r].shape};
    for (int i = 0; i < 4; ++i) std::memcpy(row + offsets[i], text[i]->data(), text[i]->size());
    const int64_t numbers[] = {rows[r].shard->pack_start, rows[r].shard->flat_count,
                               rows[r].shard->flat_start};
    std::memcpy(row + ints, numbers, sizeof(numbers));
  }
  hsize_t dims[1] = {rows.size()};
  hsize_t chunk[1] = {std::min<hsize_t>(rows.size(), 4096)};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, chunk);
  H5Pset_deflate(dcpl, 1);
  hid_t ds = H5Dcreate2(file, kPackedTable, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  const herr_t rc = ds < 0 ? -1 : H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer.data());
  if (ds >= 0) H5Dclose(ds);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Tclose(type);
  return rc < 0 ? Internal("cannot write the packed table of the manifest") : Status::Ok();
}

// A file access list for an in-memory HDF5 file (the core driver without a backing store).
hid_t MemoryFapl() {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 64 << 10, /*backing_store=*/0);
  return fapl;
}

void WriteHeadlineAttributes(hid_t file, const Manifest& m, uint64_t index_hash) {
  WriteStringAttr(file, "distckpt_format", "distckpt");
  WriteAttribute(file, "format_version", H5T_NATIVE_INT, m.format_version);
  WriteAttribute(file, "step", H5T_NATIVE_INT64, m.step);
  WriteAttribute(file, "world_size", H5T_NATIVE_INT, m.world_size);
  for (const char* key : {"epoch", "loss"}) {
    auto it = m.scalars.find(key);
    if (it == m.scalars.end()) continue;
    if (auto* i = std::get_if<int64_t>(&it->second)) {
      WriteAttribute(file, key, H5T_NATIVE_INT64, *i);
    }
    if (auto* d = std::get_if<double>(&it->second)) {
      WriteAttribute(file, key, H5T_NATIVE_DOUBLE, *d);
    }
  }
  WriteAttribute(file, "index_xxh3", H5T_NATIVE_UINT64, index_hash);
}

herr_t WriteIndex(hid_t file, const std::string& index) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hsize_t dims[1] = {index.size()};
  hsize_t chunk[1] = {std::min<hsize_t>(index.size(), 1 << 20)};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  // Compressed (h5py decompresses transparently): the index of many small tensors is mostly
  // repeated keys and names, and would otherwise be larger than the tensors themselves.
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, chunk);
  H5Pset_deflate(dcpl, 1);
  hid_t ds = H5Dcreate2(file, kIndexDataset, H5T_STD_U8LE, space, lcpl, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  herr_t rc =
      ds < 0 ? -1 : H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, index.data());
  if (ds >= 0) H5Dclose(ds);
  H5Sclose(space);
  H5Pclose(lcpl);
  return rc;
}

// The file's bytes, or an empty string when HDF5 cannot produce them.
std::string FileImage(hid_t file) {
  H5Fflush(file, H5F_SCOPE_GLOBAL);
  const ssize_t size = H5Fget_file_image(file, nullptr, 0);
  if (size <= 0) return {};
  std::string image(static_cast<size_t>(size), '\0');
  if (H5Fget_file_image(file, image.data(), image.size()) != size) return {};
  return image;
}

// Reads the index bytes and their recorded checksum out of an open manifest file.
Status ReadIndex(hid_t file, const std::string& path, std::string* index, uint64_t* hash) {
  if (H5Aexists(file, "distckpt_format") <= 0 || H5Aexists(file, "index_xxh3") <= 0 ||
      H5Lexists(file, "/_distckpt", H5P_DEFAULT) <= 0 ||
      H5Lexists(file, kIndexDataset, H5P_DEFAULT) <= 0) {
    return Corrupt("'" + path + "' is an HDF5 file but not a distckpt manifest");
  }
  hid_t hash_attr = H5Aopen(file, "index_xxh3", H5P_DEFAULT);
  const herr_t hash_rc = hash_attr < 0 ? -1 : H5Aread(hash_attr, H5T_NATIVE_UINT64, hash);
  if (hash_attr >= 0) H5Aclose(hash_attr);
  if (hash_rc < 0) return Corrupt("cannot read the index checksum of '" + path + "'");
  hid_t ds = H5Dopen2(file, kIndexDataset, H5P_DEFAULT);
  if (ds < 0) return Corrupt("cannot open the index of '" + path + "'");
  hid_t space = H5Dget_space(ds);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  H5Sclose(space);
  Status status;
  if (n < 0 || n > (int64_t{1} << 32)) {
    status = Corrupt("'" + path + "' has an index of impossible size");
  } else {
    index->resize(static_cast<size_t>(n));
    if (H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, index->data()) < 0) {
      status = Corrupt("cannot read the index of '" + path + "' (damaged or truncated?)");
    }
  }
  H5Dclose(ds);
  return status;
}

}  // namespace

Result<std::string> EncodeManifestFile(const Manifest& m) {
  QuietHdf5Errors();
  const std::string index = m.ToJson();
  hid_t fapl = MemoryFapl();
  hid_t file = H5Fcreate(kManifestImageName, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (file < 0) return Internal("cannot create the manifest in memory");
  WriteHeadlineAttributes(file, m, HashBytes(index.data(), index.size()));
  Status status;
  if (WriteIndex(file, index) < 0) status = Internal("cannot write the manifest index");
  if (status.ok()) status = WriteVirtualDatasets(file, m);
  if (status.ok()) status = WritePackedTable(file, m);
  std::string image = status.ok() ? FileImage(file) : std::string();
  H5Fclose(file);
  RETURN_IF_ERROR(status);
  if (image.empty()) return Internal("HDF5 gave no image of the manifest");
  return image;
}

Result<Manifest> DecodeManifestFile(const std::string& bytes, const std::string& path) {
  QuietHdf5Errors();
  if (bytes.size() < 8 || bytes.compare(0, 8, "\x89HDF\r\n\x1a\n") != 0) {
    return Corrupt("'" + path + "' is not an HDF5 file");
  }
  hid_t fapl = MemoryFapl();
  // HDF5 copies the image; the flags keep it from writing to our buffer.
  H5Pset_file_image(fapl, const_cast<char*>(bytes.data()), bytes.size());
  hid_t file = H5Fopen(kManifestImageName, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (file < 0) return Corrupt("cannot open '" + path + "' as HDF5 (damaged or truncated?)");
  std::string index;
  uint64_t expected_hash = 0;
  Status status = ReadIndex(file, path, &index, &expected_hash);
  H5Fclose(file);
  RETURN_IF_ERROR(status);
  if (HashBytes(index.data(), index.size()) != expected_hash) {
    return Corrupt("the index in '" + path + "' fails its xxh3 checksum (bit rot?)");
  }
  auto manifest = Manifest::FromJson(index);
  if (!manifest.ok()) return manifest.status().Annotate("'" + path + "'");
  return manifest;
}

}  // namespace distckpt
