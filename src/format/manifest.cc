#include "distckpt/manifest.h"

#include <hdf5.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "distckpt/plan.h"
#include "storage/checksum.h"
#include "storage/hdf5_file.h"

namespace distckpt {

using nlohmann::json;

int64_t TensorRecord::numel() const { return NumElements(global_shape); }
int64_t TensorRecord::nbytes() const { return numel() * c10::elementSize(dtype); }

const TensorRecord* Manifest::FindTensor(const std::string& path) const {
  for (const auto& t : tensors) {
    if (t.path == path) return &t;
  }
  return nullptr;
}

int64_t Manifest::TotalBytes() const {
  int64_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();
  return total;
}

namespace {

uint64_t DoubleBits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof(u));
  return u;
}

double BitsDouble(uint64_t u) {
  double d;
  std::memcpy(&d, &u, sizeof(d));
  return d;
}

json ScalarToJson(const ScalarValue& v) {
  json j;
  if (auto* i = std::get_if<int64_t>(&v)) {
    j = {{"type", "int"}, {"value", *i}};
  } else if (auto* d = std::get_if<double>(&v)) {
    // Bits keep NaN, infinities and every last digit.
    j = {{"type", "double"}, {"bits", DoubleBits(*d)}};
    if (std::isfinite(*d)) j["value"] = *d;
  } else if (auto* b = std::get_if<bool>(&v)) {
    j = {{"type", "bool"}, {"value", *b}};
  } else if (auto* s = std::get_if<std::string>(&v)) {
    j = {{"type", "string"}, {"value", *s}};
  } else if (auto* il = std::get_if<std::vector<int64_t>>(&v)) {
    j = {{"type", "int_list"}, {"value", *il}};
  } else if (auto* dl = std::get_if<std::vector<double>>(&v)) {
    std::vector<uint64_t> bits;
    for (double d : *dl) bits.push_back(DoubleBits(d));
    j = {{"type", "double_list"}, {"bits", bits}};
  } else if (auto* sl = std::get_if<std::vector<std::string>>(&v)) {
    j = {{"type", "string_list"}, {"value", *sl}};
  }
  return j;
}

ScalarValue ScalarFromJson(const json& j) {
  const std::string type = j.at("type").get<std::string>();
  if (type == "int") return j.at("value").get<int64_t>();
  if (type == "double") return BitsDouble(j.at("bits").get<uint64_t>());
  if (type == "bool") return j.at("value").get<bool>();
  if (type == "string") return j.at("value").get<std::string>();
  if (type == "int_list") return j.at("value").get<std::vector<int64_t>>();
  if (type == "double_list") {
    std::vector<double> out;
    for (uint64_t b : j.at("bits").get<std::vector<uint64_t>>()) out.push_back(BitsDouble(b));
    return out;
  }
  if (type == "string_list") return j.at("value").get<std::vector<std::string>>();
  throw std::runtime_error("unknown scalar type '" + type + "'");
}

PlacementKind PlacementFromName(const std::string& name) {
  for (PlacementKind k :
       {PlacementKind::kReplicated, PlacementKind::kShardedRows, PlacementKind::kShardedFlat}) {
    if (name == PlacementName(k)) return k;
  }
  throw std::runtime_error("unknown placement '" + name + "'");
}

bool SafeRelativeName(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..";
}

Status Validate(const Manifest& m) {
  if (m.format_version != kFormatVersion) {
    return Mismatch("format version " + std::to_string(m.format_version) +
                    " is not supported (this build reads version " +
                    std::to_string(kFormatVersion) + ")");
  }
  if (m.world_size < 1) return Corrupt("world size " + std::to_string(m.world_size));
  if (m.piece_bytes < 1) return Corrupt("checksum piece size " + std::to_string(m.piece_bytes));
  for (const auto& f : m.files) {
    if (!SafeRelativeName(f)) return Corrupt("rank file name '" + f + "' leaves the directory");
  }
  for (const TensorRecord& t : m.tensors) {
    std::string where = "tensor '" + t.path + "'";
    for (int64_t d : t.global_shape) {
      if (d < 0) return Corrupt(where + ": negative dimension");
    }
    std::vector<StoredRange> ranges;
    const int64_t esize = c10::elementSize(t.dtype);
    for (const ShardRecord& s : t.shards) {
      if (!SafeRelativeName(s.file)) {
        return Corrupt(where + ": shard file name '" + s.file + "' leaves the directory");
      }
      if (NumElements(s.stored_shape) != s.flat_count) {
        return Corrupt(where + ": shard in '" + s.file + "' has a shape that does not match its " +
                       std::to_string(s.flat_count) + " elements");
      }
      const int64_t bytes = s.flat_count * esize;
      const int64_t pieces = (bytes + m.piece_bytes - 1) / m.piece_bytes;
      if (static_cast<int64_t>(s.checksums.size()) != pieces) {
        return Corrupt(where + ": shard in '" + s.file + "' has " +
                       std::to_string(s.checksums.size()) + " checksums, expected " +
                       std::to_string(pieces));
      }
      ranges.push_back({s.flat_start, s.flat_count});
    }
    RETURN_IF_ERROR(CheckCoverage(ranges, t.numel()).Annotate(where));
  }
  return Status::Ok();
}

}  // namespace

std::string Manifest::ToJson(int indent) const {
  json j;
  j["format"] = "distckpt";
  j["format_version"] = format_version;
  j["step"] = step;
  j["world_size"] = world_size;
  j["created_unix"] = created_unix;
  j["library_version"] = library_version;
  j["torch_version"] = torch_version;
  j["piece_bytes"] = piece_bytes;
  j["files"] = files;
  json records = json::array();
  for (const FileRecord& f : file_records) {
    records.push_back({{"name", f.name}, {"size", f.size}, {"meta_xxh3", f.meta_xxh3}});
  }
  j["file_records"] = records;
  json scalars_json = json::object();
  for (const auto& [path, value] : scalars) scalars_json[path] = ScalarToJson(value);
  j["scalars"] = scalars_json;
  json tensors_json = json::array();
  for (const TensorRecord& t : tensors) {
    json tj = {{"path", t.path},
               {"dtype", DtypeName(t.dtype)},
               {"shape", t.global_shape},
               {"placement", PlacementName(t.placement)}};
    json shards_json = json::array();
    for (const ShardRecord& s : t.shards) {
      shards_json.push_back({{"rank", s.writer_rank},
                             {"file", s.file},
                             {"dataset", s.dataset},
                             {"flat_start", s.flat_start},
                             {"flat_count", s.flat_count},
                             {"stored_shape", s.stored_shape},
                             {"byte_offset", s.byte_offset},
                             {"xxh3", s.checksums}});
    }
    tj["shards"] = shards_json;
    tensors_json.push_back(tj);
  }
  j["tensors"] = tensors_json;
  return j.dump(indent);
}

Result<Manifest> Manifest::FromJson(const std::string& text, bool validate) {
  Manifest m;
  try {
    json j = json::parse(text);
    if (!j.is_object() || j.value("format", "") != "distckpt") {
      return Corrupt("not a distckpt manifest index");
    }
    m.format_version = j.at("format_version").get<int>();
    m.step = j.at("step").get<int64_t>();
    m.world_size = j.at("world_size").get<int>();
    m.created_unix = j.at("created_unix").get<double>();
    m.library_version = j.at("library_version").get<std::string>();
    m.torch_version = j.at("torch_version").get<std::string>();
    m.piece_bytes = j.at("piece_bytes").get<int64_t>();
    m.files = j.at("files").get<std::vector<std::string>>();
    if (j.contains("file_records")) {
      for (const json& f : j.at("file_records")) {
        m.file_records.push_back({f.at("name").get<std::string>(), f.at("size").get<uint64_t>(),
                                  f.at("meta_xxh3").get<uint64_t>()});
      }
    }
    for (const auto& [path, value] : j.at("scalars").items()) {
      m.scalars[path] = ScalarFromJson(value);
    }
    for (const json& tj : j.at("tensors")) {
      TensorRecord t;
      t.path = tj.at("path").get<std::string>();
      std::string dtype = tj.at("dtype").get<std::string>();
      if (!DtypeFromName(dtype, &t.dtype)) {
        return Corrupt("tensor '" + t.path + "' has unsupported dtype '" + dtype + "'");
      }
      t.global_shape = tj.at("shape").get<std::vector<int64_t>>();
      t.placement = PlacementFromName(tj.at("placement").get<std::string>());
      for (const json& sj : tj.at("shards")) {
        ShardRecord s;
        s.writer_rank = sj.at("rank").get<int>();
        s.file = sj.at("file").get<std::string>();
        s.dataset = sj.at("dataset").get<std::string>();
        s.flat_start = sj.at("flat_start").get<int64_t>();
        s.flat_count = sj.at("flat_count").get<int64_t>();
        s.stored_shape = sj.at("stored_shape").get<std::vector<int64_t>>();
        s.byte_offset = sj.at("byte_offset").get<uint64_t>();
        s.checksums = sj.at("xxh3").get<std::vector<uint64_t>>();
        t.shards.push_back(std::move(s));
      }
      m.tensors.push_back(std::move(t));
    }
  } catch (const std::exception& e) {
    return Corrupt(std::string("malformed manifest index: ") + e.what());
  }
  if (validate) RETURN_IF_ERROR(Validate(m));
  return m;
}

namespace {

constexpr char kIndexDataset[] = "/_distckpt/index";

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

// A virtual dataset per tensor that stitches its shards from the rank files, so that
// h5py.File("manifest.h5")["model_state_dict/w"][...] is the whole tensor. 0-d tensors and
// empty tensors are left out: HDF5 maps no scalar or empty selections.
Status WriteVirtualDatasets(hid_t file, const Manifest& m) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  Status status;
  for (const TensorRecord& t : m.tensors) {
    if (t.global_shape.empty() || t.numel() == 0) continue;
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

Status WriteManifestFile(const std::string& path, const Manifest& m) {
  QuietHdf5Errors();
  const std::string index = m.ToJson();
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return IoError("cannot create '" + path + "'");
  WriteStringAttr(file, "distckpt_format", "distckpt");
  WriteAttribute(file, "format_version", H5T_NATIVE_INT, m.format_version);
  WriteAttribute(file, "step", H5T_NATIVE_INT64, m.step);
  WriteAttribute(file, "world_size", H5T_NATIVE_INT, m.world_size);
  for (const char* key : {"epoch", "loss"}) {
    auto it = m.scalars.find(key);
    if (it == m.scalars.end()) continue;
    if (auto* i = std::get_if<int64_t>(&it->second))
      WriteAttribute(file, key, H5T_NATIVE_INT64, *i);
    if (auto* d = std::get_if<double>(&it->second))
      WriteAttribute(file, key, H5T_NATIVE_DOUBLE, *d);
  }
  const uint64_t index_hash = HashBytes(index.data(), index.size());
  WriteAttribute(file, "index_xxh3", H5T_NATIVE_UINT64, index_hash);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hsize_t dims[1] = {index.size()};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t ds = H5Dcreate2(file, kIndexDataset, H5T_STD_U8LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc =
      ds < 0 ? -1 : H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, index.data());
  if (ds >= 0) H5Dclose(ds);
  H5Sclose(space);
  H5Pclose(lcpl);
  Status views = rc < 0 ? Status::Ok() : WriteVirtualDatasets(file, m);
  herr_t close_rc = H5Fclose(file);
  if (rc < 0 || close_rc < 0) return IoError("cannot write the manifest '" + path + "'");
  return views.Annotate("'" + path + "'");
}

}  // namespace

Status WriteManifest(Env* env, const std::string& dir, const Manifest& manifest) {
  const std::string tmp = JoinPath(dir, std::string(kManifestName) + ".tmp");
  const std::string final_path = JoinPath(dir, kManifestName);
  RETURN_IF_ERROR(WriteManifestFile(tmp, manifest));
  uint64_t whole = 0;
  {
    ASSIGN_OR_RETURN(auto file, env->OpenWritable(tmp));
    RETURN_IF_ERROR(file->Sync());
    RETURN_IF_ERROR(file->Close());
    ASSIGN_OR_RETURN(auto in, env->OpenReadable(tmp));
    ASSIGN_OR_RETURN(uint64_t size, in->Size());
    std::string bytes(size, '\0');
    RETURN_IF_ERROR(in->PRead(0, bytes.data(), size));
    whole = HashBytes(bytes.data(), bytes.size());
  }
  // The sum goes in first: a manifest without its sum is never visible.
  const std::string sum_tmp = JoinPath(dir, std::string(kManifestSumName) + ".tmp");
  {
    std::FILE* f = std::fopen(sum_tmp.c_str(), "w");
    if (!f) return IoError("cannot create '" + sum_tmp + "'");
    std::fprintf(f, "%016llx\n", static_cast<unsigned long long>(whole));
    std::fclose(f);
    ASSIGN_OR_RETURN(auto file, env->OpenWritable(sum_tmp));
    RETURN_IF_ERROR(file->Sync());
    RETURN_IF_ERROR(file->Close());
  }
  RETURN_IF_ERROR(env->Rename(sum_tmp, JoinPath(dir, kManifestSumName)));
  return env->Rename(tmp, final_path);
}

Result<Manifest> ReadManifest(const std::string& dir) {
  QuietHdf5Errors();
  const std::string path = JoinPath(dir, kManifestName);
  Env* env = Env::Default();
  if (!env->IsDirectory(dir)) return NotFound("checkpoint directory '" + dir + "' does not exist");
  if (!env->Exists(path)) {
    return NotFound("'" + dir + "' has no " + kManifestName + " (not a committed checkpoint)");
  }
  // The whole-file sum, when present (every checkpoint this version writes has one).
  const std::string sum_path = JoinPath(dir, kManifestSumName);
  if (env->Exists(sum_path)) {
    std::string recorded;
    {
      auto sum = env->OpenReadable(sum_path);
      if (!sum.ok()) return sum.status();
      auto n = sum.value()->Size();
      if (!n.ok()) return n.status();
      recorded.resize(std::min<uint64_t>(n.value(), 64));
      if (!sum.value()->PRead(0, recorded.data(), recorded.size()).ok()) recorded.clear();
    }
    auto in = env->OpenReadable(path);
    if (!in.ok()) return in.status();
    auto size = in.value()->Size();
    if (!size.ok()) return size.status();
    std::string bytes(size.value(), '\0');
    Status read = in.value()->PRead(0, bytes.data(), bytes.size());
    char expected[32];
    std::snprintf(expected, sizeof(expected), "%016llx\n",
                  static_cast<unsigned long long>(HashBytes(bytes.data(), bytes.size())));
    const bool parsed = recorded.size() == 17;
    if (!parsed || !read.ok() || recorded != expected) {
      return Corrupt("'" + path + "' fails its xxh3 checksum in " + kManifestSumName +
                     " (bit rot or truncation)");
    }
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    return Corrupt("'" + path + "' is not an HDF5 file");
  }
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) return Corrupt("cannot open '" + path + "' as HDF5 (damaged or truncated?)");
  std::string index;
  uint64_t expected_hash = 0;
  Status status = Status::Ok();
  hid_t attr = H5Aexists(file, "distckpt_format") > 0
                   ? H5Aopen(file, "distckpt_format", H5P_DEFAULT)
                   : H5I_INVALID_HID;
  hid_t hash_attr = H5Aexists(file, "index_xxh3") > 0 ? H5Aopen(file, "index_xxh3", H5P_DEFAULT)
                                                      : H5I_INVALID_HID;
  hid_t ds = H5Lexists(file, "/_distckpt", H5P_DEFAULT) > 0 &&
                     H5Lexists(file, kIndexDataset, H5P_DEFAULT) > 0
                 ? H5Dopen2(file, kIndexDataset, H5P_DEFAULT)
                 : H5I_INVALID_HID;
  if (attr < 0 || ds < 0 || hash_attr < 0) {
    status = Corrupt("'" + path + "' is an HDF5 file but not a distckpt manifest");
  } else if (H5Aread(hash_attr, H5T_NATIVE_UINT64, &expected_hash) < 0) {
    status = Corrupt("cannot read the index checksum of '" + path + "'");
  } else {
    hid_t space = H5Dget_space(ds);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    if (n < 0 || n > (int64_t{1} << 32)) {
      status = Corrupt("'" + path + "' has an index of impossible size");
    } else {
      index.resize(static_cast<size_t>(n));
      if (H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, index.data()) < 0) {
        status = Corrupt("cannot read the index of '" + path + "' (damaged or truncated?)");
      }
    }
  }
  if (attr >= 0) H5Aclose(attr);
  if (hash_attr >= 0) H5Aclose(hash_attr);
  if (ds >= 0) H5Dclose(ds);
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
