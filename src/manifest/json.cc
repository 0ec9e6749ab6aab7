// The manifest's JSON mapping: to_json/from_json for each record, found by nlohmann through ADL.
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "core/status_macros.h"
#include "distckpt/manifest.h"
#include "manifest/validate.h"

namespace distckpt {

using nlohmann::json;

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

// Integers are read only from JSON integers within the target's range: nlohmann converts a
// float such as 1e77 to an integer with a cast whose result is undefined (found by fuzzing).
template <typename T>
T Integer(const json& j) {
  static_assert(std::is_integral_v<T>);
  if (!j.is_number_integer()) throw std::runtime_error("expected an integer, found " + j.dump());
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      throw std::runtime_error("integer " + j.dump() + " is out of range");
    }
    return static_cast<T>(v);
  }
  const int64_t v = j.get<int64_t>();
  if ((std::is_unsigned_v<T> && v < 0) ||
      (!std::is_unsigned_v<T> && (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
                                  v > static_cast<int64_t>(std::numeric_limits<T>::max())))) {
    throw std::runtime_error("integer " + j.dump() + " is out of range");
  }
  return static_cast<T>(v);
}

template <typename T>
void GetTo(const json& j, T& out) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    out = Integer<T>(j);
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>> ||
                       std::is_same_v<T, std::vector<uint64_t>>) {
    if (!j.is_array()) throw std::runtime_error("expected a list of integers");
    out.clear();
    for (const json& e : j) out.push_back(Integer<typename T::value_type>(e));
  } else {
    j.get_to(out);
  }
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
  if (type == "int") return Integer<int64_t>(j.at("value"));
  if (type == "double") return BitsDouble(Integer<uint64_t>(j.at("bits")));
  if (type == "bool") return j.at("value").get<bool>();
  if (type == "string") return j.at("value").get<std::string>();
  if (type == "int_list") {
    std::vector<int64_t> out;
    GetTo(j.at("value"), out);
    return out;
  }
  if (type == "double_list") {
    std::vector<double> out;
    std::vector<uint64_t> bits;
    GetTo(j.at("bits"), bits);
    for (uint64_t b : bits) out.push_back(BitsDouble(b));
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

}  // namespace

void to_json(json& j, const ShardRecord& s) {
  j = {{"rank", s.writer_rank},        {"file", s.file},
       {"dataset", s.dataset},         {"flat_start", s.flat_start},
       {"flat_count", s.flat_count},   {"stored_shape", s.stored_shape},
       {"byte_offset", s.byte_offset}, {"xxh3", s.checksums}};
  if (s.packed) j["pack_start"] = s.pack_start;
}

void from_json(const json& j, ShardRecord& s) {
  GetTo(j.at("rank"), s.writer_rank);
  GetTo(j.at("file"), s.file);
  GetTo(j.at("dataset"), s.dataset);
  GetTo(j.at("flat_start"), s.flat_start);
  GetTo(j.at("flat_count"), s.flat_count);
  GetTo(j.at("stored_shape"), s.stored_shape);
  GetTo(j.at("byte_offset"), s.byte_offset);
  GetTo(j.at("xxh3"), s.checksums);
  auto pack = j.find("pack_start");
  s.packed = pack != j.end();
  if (s.packed) GetTo(*pack, s.pack_start);
}

void to_json(json& j, const FileRecord& f) {
  j = {{"name", f.name}, {"size", f.size}, {"meta_xxh3", f.meta_xxh3}};
}

void from_json(const json& j, FileRecord& f) {
  GetTo(j.at("name"), f.name);
  GetTo(j.at("size"), f.size);
  GetTo(j.at("meta_xxh3"), f.meta_xxh3);
}

void to_json(json& j, const TensorRecord& t) {
  j = {{"path", t.path},
       {"dtype", DtypeName(t.dtype)},
       {"shape", t.global_shape},
       {"placement", PlacementName(t.placement)},
       {"shards", t.shards}};
}

void from_json(const json& j, TensorRecord& t) {
  GetTo(j.at("path"), t.path);
  const std::string dtype = j.at("dtype").get<std::string>();
  if (!DtypeFromName(dtype, &t.dtype)) {
    throw std::runtime_error("tensor '" + t.path + "' has unsupported dtype '" + dtype + "'");
  }
  GetTo(j.at("shape"), t.global_shape);
  t.placement = PlacementFromName(j.at("placement").get<std::string>());
  GetTo(j.at("shards"), t.shards);
}

std::string Manifest::ToJson(int indent) const {
  if (indent >= 0) return json::parse(ToJson()).dump(indent);  // for people: cost is no concern
  json j = {{"format", "distckpt"},
            {"format_version", format_version},
            {"step", step},
            {"world_size", world_size},
            {"created_unix", created_unix},
            {"library_version", library_version},
            {"torch_version", torch_version},
            {"piece_bytes", piece_bytes},
            {"files", files},
            {"file_records", file_records}};
  if (!holders.empty()) j["holders"] = holders;
  json scalars_json = json::object();
  for (const auto& [path, value] : scalars) scalars_json[path] = ScalarToJson(value);
  j["scalars"] = scalars_json;
  // The tensors are appended one at a time: one document for a million tensors would cost
  // gigabytes of nodes.
  std::string out = j.dump();
  out.pop_back();  // the closing brace
  out += ",\"tensors\":[";
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i > 0) out += ',';
    out += json(tensors[i]).dump();
  }
  out += "]}";
  return out;
}

Result<Manifest> Manifest::FromJson(const std::string& text, bool validate) {
  Manifest m;
  try {
    // Each tensor is converted as soon as it is parsed and dropped from the document, which
    // therefore never holds more than one tensor's nodes.
    bool in_tensors = false;
    json::parser_callback_t take_tensors = [&](int depth, json::parse_event_t event, json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key) {
        in_tensors = parsed == "tensors";
      } else if (in_tensors && depth == 2 && event == json::parse_event_t::object_end) {
        m.tensors.push_back(parsed.get<TensorRecord>());
        return false;
      }
      return true;
    };
    json j = json::parse(text, take_tensors);
    if (!j.is_object() || j.value("format", "") != "distckpt") {
      return Corrupt("not a distckpt manifest index");
    }
    GetTo(j.at("format_version"), m.format_version);
    GetTo(j.at("step"), m.step);
    GetTo(j.at("world_size"), m.world_size);
    GetTo(j.at("created_unix"), m.created_unix);
    GetTo(j.at("library_version"), m.library_version);
    GetTo(j.at("torch_version"), m.torch_version);
    GetTo(j.at("piece_bytes"), m.piece_bytes);
    GetTo(j.at("files"), m.files);
    if (j.contains("file_records")) GetTo(j.at("file_records"), m.file_records);
    if (j.contains("holders")) GetTo(j.at("holders"), m.holders);
    for (const auto& [path, value] : j.at("scalars").items()) {
      m.scalars[path] = ScalarFromJson(value);
    }
    // What is left of "tensors" after the callback took every object: anything else is damage.
    auto rest = j.find("tensors");
    if (rest == j.end() || !rest->is_array() || !rest->empty()) {
      return Corrupt("malformed manifest index: \"tensors\" is not a list of tensor records");
    }
  } catch (const std::exception& e) {
    return Corrupt(std::string("malformed manifest index: ") + e.what());
  }
  if (validate) RETURN_IF_ERROR(ValidateManifest(m));
  return m;
}

}  // namespace distckpt
