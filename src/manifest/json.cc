// The manifest's JSON mapping: to_json/from_json for each record, found by nlohmann through ADL.
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

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

}  // namespace

void to_json(json& j, const ShardRecord& s) {
  j = {{"rank", s.writer_rank},        {"file", s.file},
       {"dataset", s.dataset},         {"flat_start", s.flat_start},
       {"flat_count", s.flat_count},   {"stored_shape", s.stored_shape},
       {"byte_offset", s.byte_offset}, {"xxh3", s.checksums}};
  if (s.packed) j["pack_start"] = s.pack_start;
}

void from_json(const json& j, ShardRecord& s) {
  j.at("rank").get_to(s.writer_rank);
  j.at("file").get_to(s.file);
  j.at("dataset").get_to(s.dataset);
  j.at("flat_start").get_to(s.flat_start);
  j.at("flat_count").get_to(s.flat_count);
  j.at("stored_shape").get_to(s.stored_shape);
  j.at("byte_offset").get_to(s.byte_offset);
  j.at("xxh3").get_to(s.checksums);
  auto pack = j.find("pack_start");
  s.packed = pack != j.end();
  if (s.packed) pack->get_to(s.pack_start);
}

void to_json(json& j, const FileRecord& f) {
  j = {{"name", f.name}, {"size", f.size}, {"meta_xxh3", f.meta_xxh3}};
}

void from_json(const json& j, FileRecord& f) {
  j.at("name").get_to(f.name);
  j.at("size").get_to(f.size);
  j.at("meta_xxh3").get_to(f.meta_xxh3);
}

void to_json(json& j, const TensorRecord& t) {
  j = {{"path", t.path},
       {"dtype", DtypeName(t.dtype)},
       {"shape", t.global_shape},
       {"placement", PlacementName(t.placement)},
       {"shards", t.shards}};
}

void from_json(const json& j, TensorRecord& t) {
  j.at("path").get_to(t.path);
  const std::string dtype = j.at("dtype").get<std::string>();
  if (!DtypeFromName(dtype, &t.dtype)) {
    throw std::runtime_error("tensor '" + t.path + "' has unsupported dtype '" + dtype + "'");
  }
  j.at("shape").get_to(t.global_shape);
  t.placement = PlacementFromName(j.at("placement").get<std::string>());
  j.at("shards").get_to(t.shards);
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
    j.at("format_version").get_to(m.format_version);
    j.at("step").get_to(m.step);
    j.at("world_size").get_to(m.world_size);
    j.at("created_unix").get_to(m.created_unix);
    j.at("library_version").get_to(m.library_version);
    j.at("torch_version").get_to(m.torch_version);
    j.at("piece_bytes").get_to(m.piece_bytes);
    j.at("files").get_to(m.files);
    if (j.contains("file_records")) j.at("file_records").get_to(m.file_records);
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
