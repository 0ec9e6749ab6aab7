// Safetensors export and import.
//
// A .safetensors file is an 8-byte little-endian header length N, N bytes of JSON header
// ({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, padded
// with spaces to a multiple of 8), then the tensor bytes, each at its offsets from the end of the
// header. Export plans every file and header from the manifest alone, so every rank knows the
// whole layout: rank 0 creates the files at their full size, each rank writes the byte range
// [T*r/N, T*(r+1)/N) of the concatenated tensor data (cut at element boundaries), and after a
// vote rank 0 renames the files into place and writes the index.
#include "distckpt/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "checkpoint/commit_import.h"
#include "core/dtype.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "distckpt/manifest_io.h"
#include "io/file_util.h"
#include "io/shard_reader.h"
#include "layout/filename.h"
#include "plan/plan.h"

namespace distckpt {
namespace {

using nlohmann::json;

constexpr int64_t kChunkBytes = 64 << 20;          // read and written per round
constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as the safetensors library allows
constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

const char* CodeOf(at::ScalarType dtype) {
  const DtypeInfo* d = FindDtype(dtype);
  return d ? d->safetensors_code : nullptr;
}

bool DtypeOfCode(const std::string& code, at::ScalarType* dtype) {
  const DtypeInfo* d = FindDtypeBySafetensorsCode(code);
  if (d) *dtype = d->dtype;
  return d != nullptr;
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// ---- Export -----------------------------------------------------------------------------

struct OutTensor {
  std::string name;
  const TensorRecord* record = nullptr;
  int64_t nbytes = 0;
  int file = 0;
  int64_t offset = 0;  // from the end of its file's header
  int64_t global = 0;  // in the concatenation of every file's data
};

struct OutFile {
  std::string name;    // the file name (or the whole path for a single-file output)
  std::string prefix;  // the 8-byte length and the padded header
  int64_t data_bytes = 0;
};

struct Layout {
  std::vector<OutTensor> tensors;
  std::vector<OutFile> files;
  int64_t total = 0;
};

std::string DoubleText(double d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", d);
  return buf;
}

json Metadata(int64_t step, const std::map<std::string, ScalarValue>& scalars) {
  json meta = {{"format", "pt"}, {"step", std::to_string(step)}};
  for (const char* key : {"epoch", "loss"}) {
    auto it = scalars.find(key);
    if (it == scalars.end()) continue;
    if (auto* i = std::get_if<int64_t>(&it->second)) meta[key] = std::to_string(*i);
    if (auto* d = std::get_if<double>(&it->second)) meta[key] = DoubleText(*d);
  }
  return meta;
}

std::string HeaderBytes(const Layout& layout, int file, const json& metadata) {
  json header = {{"__metadata__", metadata}};
  for (const OutTensor& t : layout.tensors) {
    if (t.file != file) continue;
    header[t.name] = {{"dtype", CodeOf(t.record->dtype)},
                      {"shape", t.record->global_shape},
                      {"data_offsets", {t.offset, t.offset + t.nbytes}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  return out + text;
}

// Shards as transformers cuts them: in order, a new file when the next tensor would overflow.
Result<Layout> PlanLayout(const std::vector<TensorRecord>& records, const json& metadata,
                          const SafetensorsExportOptions& options, bool single) {
  Layout layout;
  int64_t in_file = 0;
  for (const TensorRecord& r : records) {
    if (r.path.compare(0, options.prefix.size(), options.prefix) != 0) continue;
    if (!CodeOf(r.dtype)) {
      return InvalidArgument("tensor '" + r.path + "': dtype " + DtypeName(r.dtype) +
                             " has no safetensors equivalent");
    }
    OutTensor t;
    t.name = r.path.substr(options.prefix.size());
    t.record = &r;
    t.nbytes = r.nbytes();
    if (layout.files.empty() ||
        (!single && in_file > 0 && in_file + t.nbytes > options.max_shard_bytes)) {
      layout.files.emplace_back();
      in_file = 0;
    }
    t.file = static_cast<int>(layout.files.size()) - 1;
    t.offset = in_file;
    t.global = layout.total;
    in_file += t.nbytes;
    layout.files.back().data_bytes = in_file;
    layout.total += t.nbytes;
    layout.tensors.push_back(std::move(t));
  }
  if (layout.tensors.empty()) {
    return NotFound("no tensor under '" + options.prefix + "' in the checkpoint");
  }
  const int k = static_cast<int>(layout.files.size());
  for (int f = 0; f < k; ++f) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", f + 1, k);
    layout.files[f].name = k == 1 ? kSingleName : name;
    layout.files[f].prefix = HeaderBytes(layout, f, metadata);
  }
  return layout;
}

struct Output {
  Env* env;
  bool single;  // `out` is the file itself
  std::string out;
  std::string Target(const OutFile& f) const { return single ? out : JoinPath(out, f.name); }
  std::string Tmp(const OutFile& f) const { return TmpFileName(Target(f)); }
};

// Rank 0: every file at its full size, with its header, under its temporary name.
Status CreateFiles(const Output& o, const Layout& layout) {
  if (!o.single && !o.env->IsDirectory(o.out)) RETURN_IF_ERROR(o.env->CreateDir(o.out));
  for (const OutFile& f : layout.files) {
    ASSIGN_OR_RETURN(auto file, o.env->NewWritable(o.Tmp(f)));
    RETURN_IF_ERROR(file->PWrite(0, f.prefix.data(), f.prefix.size()));
    RETURN_IF_ERROR(file->Truncate(f.prefix.size() + f.data_bytes));
    RETURN_IF_ERROR(file->Close());
  }
  return Status::Ok();
}

// Which elements [first, second) of a tensor this rank writes, and where their bytes come from.
using RangeFn = std::function<std::pair<int64_t, int64_t>(const OutTensor&)>;
using SourceFn = std::function<Status(const OutTensor&, int64_t first, int64_t count, char* out)>;

// This rank's share of the concatenated data: bytes [T*r/N, T*(r+1)/N), cut at element
// boundaries of each tensor.
std::pair<int64_t, int64_t> ByteShare(const Layout& layout, const OutTensor& t, int rank,
                                      int world) {
  const int64_t lo = layout.total * rank / world, hi = layout.total * (rank + 1) / world;
  const int64_t esize = c10::elementSize(t.record->dtype);
  auto element = [&](int64_t byte) {
    return std::clamp<int64_t>((byte - t.global + esize - 1) / esize, 0, t.nbytes / esize);
  };
  return {element(lo), element(hi)};
}

// The first element of the flattened global tensor that a sharded entry holds.
int64_t FirstHeldElement(const TensorEntry& e) {
  return e.placement == PlacementKind::kShardedRows ? e.offset * RowElements(e.global_shape)
                                                    : e.offset;
}

Status WritePieces(const Output& o, const Layout& layout, const RangeFn& range,
                   const SourceFn& source, const ProgressFn& progress, int64_t* written) {
  std::map<int, std::unique_ptr<WritableFile>> open;
  std::vector<char> buffer;
  for (const OutTensor& t : layout.tensors) {
    const auto [e0, e1] = range(t);
    if (e0 >= e1) continue;
    const int64_t esize = c10::elementSize(t.record->dtype);
    const OutFile& f = layout.files[t.file];
    if (!open[t.file]) {
      ASSIGN_OR_RETURN(open[t.file], o.env->OpenWritable(o.Tmp(f)));
    }
    const int64_t per_round = std::max<int64_t>(1, kChunkBytes / esize);
    for (int64_t e = e0; e < e1; e += per_round) {
      const int64_t count = std::min(per_round, e1 - e);
      buffer.resize(static_cast<size_t>(count * esize));
      RETURN_IF_ERROR(
          source(t, e, count, buffer.data()).Annotate("tensor '" + t.record->path + "'"));
      const uint64_t at = f.prefix.size() + t.offset + e * esize;
      RETURN_IF_ERROR(open[t.file]->PWrite(at, buffer.data(), buffer.size()));
      *written += static_cast<int64_t>(buffer.size());
      if (progress) progress(*written, -1);
    }
  }
  for (auto& [index, file] : open) {
    RETURN_IF_ERROR(file->Sync());
    RETURN_IF_ERROR(file->Close());
  }
  return Status::Ok();
}

json IndexJson(const Layout& layout) {
  json map = json::object();
  for (const OutTensor& t : layout.tensors) map[t.name] = layout.files[t.file].name;
  return {{"metadata", {{"total_size", layout.total}}}, {"weight_map", map}};
}

// Rank 0, after every rank has written: the files into place, then the index.
Status Publish(const Output& o, const Layout& layout, SafetensorsExportStats* stats) {
  for (const OutFile& f : layout.files) {
    RETURN_IF_ERROR(o.env->Rename(o.Tmp(f), o.Target(f)));
    stats->files.push_back(o.Target(f));
  }
  if (!o.single && layout.files.size() > 1) {
    const std::string index = JoinPath(o.out, kIndexName);
    RETURN_IF_ERROR(WriteFileDurably(o.env, TmpFileName(index), IndexJson(layout).dump(2) + "\n"));
    RETURN_IF_ERROR(o.env->Rename(TmpFileName(index), index));
    stats->files.push_back(index);
  }
  return o.env->SyncDir(o.single ? DirName(o.out) : o.out);
}

}  // namespace

namespace {

// Every rank: the files created by rank 0, this rank's pieces written, the files published.
Result<SafetensorsExportStats> RunExport(Communicator& comm, const Output& o,
                                         const Result<Layout>& layout, const RangeFn& range,
                                         const SourceFn& source, const ProgressFn& progress) {
  Status status = layout.status();
  if (status.ok() && comm.rank() == 0) status = CreateFiles(o, *layout);
  RETURN_IF_ERROR(AgreeOnStatus(comm, status));
  SafetensorsExportStats stats;
  status = WritePieces(o, *layout, range, source, progress, &stats.bytes_written_here);
  status = AgreeOnStatus(comm, status);
  if (status.ok() && comm.rank() == 0) status = Publish(o, *layout, &stats);
  if (comm.size() > 1) status = AgreeOnStatus(comm, status);
  if (!status.ok() && comm.rank() == 0) {
    for (const OutFile& f : layout->files) (void)o.env->RemoveAll(o.Tmp(f));  // best effort
  }
  RETURN_IF_ERROR(status);
  stats.tensors = static_cast<int>(layout->tensors.size());
  stats.tensor_bytes = layout->total;
  return stats;
}

}  // namespace

Result<SafetensorsExportStats> ExportSafetensors(const std::string& ckpt_dir,
                                                 const std::string& out,
                                                 const SafetensorsExportOptions& options) {
  return ExportSafetensors(*MakeLocalCommunicator(), ckpt_dir, out, options);
}

Result<SafetensorsExportStats> ExportSafetensors(Communicator& comm, const std::string& ckpt_dir,
                                                 const std::string& out,
                                                 const SafetensorsExportOptions& options) {
  if (options.max_shard_bytes <= 0) return InvalidArgument("max_shard_bytes must be positive");
  Output o{EnvOrDefault(options.env), EndsWith(out, ".safetensors"), out};
  auto manifest = ReadManifest(ckpt_dir, o.env);
  Result<Layout> layout = manifest.status();
  std::unique_ptr<ShardReader> reader;
  if (manifest.ok()) {
    layout = PlanLayout(manifest->tensors, Metadata(manifest->step, manifest->scalars), options,
                        o.single);
    reader = std::make_unique<ShardReader>(o.env, ckpt_dir, &*manifest, comm.rank());
    reader->set_mapped(false);  // one pass over every byte: pread keeps the resident size small
  }
  auto range = [&](const OutTensor& t) { return ByteShare(*layout, t, comm.rank(), comm.size()); };
  auto source = [&](const OutTensor& t, int64_t first, int64_t count, char* buf) {
    return reader->ReadElements(*t.record, first, count, buf);
  };
  return RunExport(comm, o, layout, range, source, options.progress);
}

Result<SafetensorsExportStats> ExportTreeSafetensors(Communicator& comm, const StateTree& tree,
                                                     int64_t step, const std::string& out,
                                                     const SafetensorsExportOptions& options) {
  if (options.max_shard_bytes <= 0) return InvalidArgument("max_shard_bytes must be positive");
  Output o{EnvOrDefault(options.env), EndsWith(out, ".safetensors"), out};
  std::vector<TensorRecord> records;  // the tree's tensors, whole, in path order
  for (const auto& [path, e] : tree.tensors()) {
    TensorRecord r;
    r.path = path;
    r.dtype = e.tensor.scalar_type();
    r.global_shape = e.global_shape;
    records.push_back(std::move(r));
  }
  Result<Layout> layout = PlanLayout(records, Metadata(step, tree.scalars()), options, o.single);
  // Replicated tensors: the rank's byte share; sharded ones: what the rank holds.
  auto range = [&](const OutTensor& t) -> std::pair<int64_t, int64_t> {
    const TensorEntry& e = tree.tensor(t.record->path);
    if (e.placement == PlacementKind::kReplicated) {
      return ByteShare(*layout, t, comm.rank(), comm.size());
    }
    const int64_t first = FirstHeldElement(e);
    return {first, first + e.tensor.numel()};
  };
  auto source = [&](const OutTensor& t, int64_t first, int64_t count, char* buf) {
    const TensorEntry& e = tree.tensor(t.record->path);
    const int64_t local =
        e.placement == PlacementKind::kReplicated ? first : first - FirstHeldElement(e);
    at::Tensor part = e.tensor.reshape({-1}).narrow(0, local, count).to(at::kCPU).contiguous();
    std::memcpy(buf, part.data_ptr(), part.nbytes());
    return Status::Ok();
  };
  return RunExport(comm, o, layout, range, source, options.progress);
}

// ---- Import -----------------------------------------------------------------------------

namespace {

// One validated file: its tensors and their bytes (a mapping, or a copy when not mapped).
struct InFile {
  std::string path;
  std::unique_ptr<ReadableFile> file;
  const char* data = nullptr;  // the first tensor byte
  json metadata;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
};

Status Bad(const std::string& path, const std::string& what) {
  return Corrupt("'" + path + "': " + what);
}

// Checks one header entry and returns its tensor's dtype, shape and [begin, end).
Status CheckEntry(const std::string& path, const std::string& name, const json& e,
                  uint64_t data_size, at::ScalarType* dtype, std::vector<int64_t>* shape,
                  uint64_t* begin, uint64_t* end) {
  const std::string where = "tensor '" + name + "'";
  if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
      !e.contains("data_offsets")) {
    return Bad(path, where + ": needs dtype, shape and data_offsets");
  }
  if (!e["dtype"].is_string() || !DtypeOfCode(e["dtype"].get<std::string>(), dtype)) {
    return Bad(path, where + ": unsupported dtype " + e["dtype"].dump());
  }
  const json& offsets = e["data_offsets"];
  if (!e["shape"].is_array() || !offsets.is_array() || offsets.size() != 2 ||
      !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
    return Bad(path, where + ": malformed shape or data_offsets");
  }
  uint64_t elements = 1;
  for (const json& d : e["shape"]) {
    if (!d.is_number_unsigned()) return Bad(path, where + ": a negative or non-integer dimension");
    const uint64_t n = d.get<uint64_t>();
    if (n != 0 && elements > (uint64_t{1} << 62) / n) return Bad(path, where + ": shape too large");
    elements *= n;
    shape->push_back(static_cast<int64_t>(n));
  }
  *begin = offsets[0].get<uint64_t>();
  *end = offsets[1].get<uint64_t>();
  if (*begin > *end || *end > data_size) {
    return Bad(path, where + ": data_offsets [" + std::to_string(*begin) + ", " +
                         std::to_string(*end) + ") outside the " + std::to_string(data_size) +
                         " data bytes");
  }
  if (*end - *begin != elements * c10::elementSize(*dtype)) {
    return Bad(path, where + ": " + std::to_string(*end - *begin) + " bytes at offset " +
                         std::to_string(*begin) + " for shape " + ShapeString(*shape) + " of " +
                         DtypeName(*dtype));
  }
  return Status::Ok();
}

Result<json> ReadHeader(InFile& in, uint64_t file_size, uint64_t* header_len) {
  if (file_size < 8) return Bad(in.path, "shorter than the 8-byte header length");
  unsigned char len_bytes[8];
  RETURN_IF_ERROR(in.file->PRead(0, len_bytes, 8));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];  // little-endian
  if (n > kMaxHeaderBytes || n > file_size - 8) {
    return Bad(in.path, "header length " + std::to_string(n) + " is beyond the file (" +
                            std::to_string(file_size) + " bytes) or the 100 MB limit");
  }
  std::string text(n, '\0');
  RETURN_IF_ERROR(in.file->PRead(8, text.data(), n));
  json header = json::parse(text, nullptr, false);
  if (header.is_discarded() || !header.is_object())
    return Bad(in.path, "header is not a JSON object");
  *header_len = n;
  return header;
}

// Validates the whole header, then makes each tensor over the mapping (or reads it).
Status OpenInFile(Env* env, InFile& in) {
  ASSIGN_OR_RETURN(in.file, env->OpenReadable(in.path));
  ASSIGN_OR_RETURN(uint64_t size, in.file->Size());
  uint64_t header_len = 0;
  ASSIGN_OR_RETURN(json header, ReadHeader(in, size, &header_len));
  const uint64_t data_start = 8 + header_len, data_size = size - data_start;
  struct Entry {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto& [name, e] : header.items()) {
    if (name == "__metadata__") {
      in.metadata = e;
      continue;
    }
    Entry x{name, at::kFloat, {}, 0, 0};
    RETURN_IF_ERROR(CheckEntry(in.path, name, e, data_size, &x.dtype, &x.shape, &x.begin, &x.end));
    entries.push_back(std::move(x));
  }
  std::vector<const Entry*> by_offset;
  for (const Entry& x : entries) by_offset.push_back(&x);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  uint64_t pos = 0;
  for (const Entry* x : by_offset) {
    if (x->begin != pos) {
      return Bad(in.path,
                 "tensor '" + x->name + "' starts at offset " + std::to_string(x->begin) +
                     (x->begin < pos ? ", overlapping the tensor before it" : ", leaving a gap") +
                     " (expected " + std::to_string(pos) + ")");
    }
    pos = x->end;
  }
  if (pos != data_size) {
    return Bad(in.path, "the tensors end at offset " + std::to_string(pos) + " of " +
                            std::to_string(data_size) + " data bytes");
  }
  const ReadableFile::Mapping map = in.file->Map();
  for (const Entry& x : entries) {
    auto options = at::TensorOptions().dtype(x.dtype);
    at::Tensor t;
    if (map.data) {
      t = at::from_blob(const_cast<char*>(map.data + data_start + x.begin), x.shape, options);
    } else {
      t = at::empty(x.shape, options);
      RETURN_IF_ERROR(in.file->PRead(data_start + x.begin, t.data_ptr(), x.end - x.begin));
    }
    in.tensors.emplace_back(x.name, t);
  }
  return Status::Ok();
}

// The files of `path`: itself, or a model directory's shards named by its index.
Result<std::vector<std::string>> ModelFiles(Env* env, const std::string& path) {
  if (!env->IsDirectory(path)) return std::vector<std::string>{path};
  const std::string index_path = JoinPath(path, kIndexName);
  if (!env->Exists(index_path)) {
    const std::string single = JoinPath(path, kSingleName);
    if (env->Exists(single)) return std::vector<std::string>{single};
    return NotFound("'" + path + "' has neither " + kIndexName + " nor " + kSingleName);
  }
  ASSIGN_OR_RETURN(std::string text, ReadWholeFile(env, index_path, kMaxHeaderBytes));
  json index = json::parse(text, nullptr, false);
  if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return Bad(index_path, "no weight_map object");
  }
  std::vector<std::string> files;
  for (auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
      return Bad(index_path, "tensor '" + name + "' maps to a file outside the directory");
    }
    const std::string f = JoinPath(path, file.get<std::string>());
    if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
  }
  return files;
}

void AddMetadataScalars(const json& meta, StateTree* tree, int64_t* step) {
  auto text = [&](const char* key) -> std::optional<std::string> {
    if (!meta.is_object() || !meta.contains(key) || !meta[key].is_string()) return std::nullopt;
    return meta[key].get<std::string>();
  };
  char* end = nullptr;
  if (auto s = text("step")) {
    const long long v = std::strtoll(s->c_str(), &end, 10);
    if (end && *end == '\0' && v >= 0 && v <= kMaxStep) *step = v;
  }
  if (auto s = text("epoch")) {
    const long long v = std::strtoll(s->c_str(), &end, 10);
    if (end && *end == '\0') tree->SetScalar("epoch", static_cast<int64_t>(v));
  }
  if (auto s = text("loss")) {
    const double v = std::strtod(s->c_str(), &end);
    if (end && *end == '\0') tree->SetScalar("loss", v);
  }
}

}  // namespace

bool IsSafetensors(const std::string& path, Env* env) {
  if (!env) env = Env::Default();
  if (env->IsDirectory(path)) {
    return env->Exists(JoinPath(path, kIndexName)) || env->Exists(JoinPath(path, kSingleName));
  }
  return EndsWith(path, ".safetensors");
}

Result<std::string> ImportSafetensors(const std::string& path, const std::string& root,
                                      const ImportOptions& options) {
  Env* env = EnvOrDefault(options.env);
  ASSIGN_OR_RETURN(std::vector<std::string> paths, ModelFiles(env, path));
  std::vector<InFile> files(paths.size());
  StateTree tree;
  int64_t step = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    files[i].path = paths[i];
    RETURN_IF_ERROR(OpenInFile(env, files[i]));
    for (auto& [name, t] : files[i].tensors) {
      const std::string key = JoinPath("model_state_dict", name);
      if (tree.HasTensor(key)) return Bad(paths[i], "tensor '" + name + "' appears twice");
      tree.SetTensor(key, t);
    }
    AddMetadataScalars(files[i].metadata, &tree, &step);
  }
  if (options.step >= 0) step = options.step;
  return CommitImport(tree, root, step, options.env);  // then `files` unmaps, after the save
}

}  // namespace distckpt
