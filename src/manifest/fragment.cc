#include "manifest/fragment.h"

#include <algorithm>

#include "core/bytes.h"
#include "core/status_macros.h"

namespace distckpt {
namespace {

// Fragments cross the communicator once per save and hold a record per shard: a compact binary
// encoding, not JSON (which dominated the cost of saving a million small tensors).
void PutShard(const std::string& path, const ShardRecord& s, ByteWriter* w) {
  w->PutI64(s.writer_rank);
  w->PutString(s.file);
  w->PutString(s.dataset == path ? std::string() : s.dataset);  // usually the path itself
  w->PutI64(s.flat_start);
  w->PutI64(s.flat_count);
  w->PutI64(static_cast<int64_t>(s.stored_shape.size()));
  for (int64_t d : s.stored_shape) w->PutI64(d);
  w->PutI64(static_cast<int64_t>(s.byte_offset));
  w->PutI64(static_cast<int64_t>(s.checksums.size()));
  for (uint64_t c : s.checksums) w->PutI64(static_cast<int64_t>(c));
  w->PutI64(s.packed ? 1 : 0);
  w->PutI64(s.pack_start);
}

// A count read from a fragment: at least 0 and no more than the bytes that could hold it.
bool GetCount(ByteReader* r, int64_t* n) {
  return r->GetI64(n) && *n >= 0 && static_cast<uint64_t>(*n) <= r->remaining() / 8;
}

bool GetShard(const std::string& path, ByteReader* r, ShardRecord* s) {
  int64_t rank, dims, offset, sums, packed;
  if (!r->GetI64(&rank) || !r->GetString(&s->file) || !r->GetString(&s->dataset) ||
      !r->GetI64(&s->flat_start) || !r->GetI64(&s->flat_count) || !GetCount(r, &dims)) {
    return false;
  }
  s->writer_rank = static_cast<int>(rank);
  if (s->dataset.empty()) s->dataset = path;
  s->stored_shape.resize(static_cast<size_t>(dims));
  for (int64_t& d : s->stored_shape) {
    if (!r->GetI64(&d)) return false;
  }
  if (!r->GetI64(&offset) || !GetCount(r, &sums)) return false;
  s->byte_offset = static_cast<uint64_t>(offset);
  s->checksums.resize(static_cast<size_t>(sums));
  for (uint64_t& c : s->checksums) {
    int64_t v;
    if (!r->GetI64(&v)) return false;
    c = static_cast<uint64_t>(v);
  }
  if (!r->GetI64(&packed) || !r->GetI64(&s->pack_start)) return false;
  s->packed = packed != 0;
  return true;
}

bool GetFile(ByteReader* r, FileRecord* f) {
  int64_t size, hash;
  if (!r->GetString(&f->name) || !r->GetI64(&size) || !r->GetI64(&hash)) return false;
  f->size = static_cast<uint64_t>(size);
  f->meta_xxh3 = static_cast<uint64_t>(hash);
  return true;
}

void PutTensorHeader(const TensorRecord& t, ByteWriter* w) {
  w->PutString(t.path);
  w->PutI64(static_cast<int64_t>(t.dtype));
  w->PutI64(static_cast<int64_t>(t.placement));
  w->PutI64(static_cast<int64_t>(t.global_shape.size()));
  for (int64_t d : t.global_shape) w->PutI64(d);
  w->PutI64(static_cast<int64_t>(t.shards.size()));
}

bool GetTensor(ByteReader* r, TensorRecord* t) {
  int64_t dtype, placement, dims, shards;
  if (!r->GetString(&t->path) || !r->GetI64(&dtype) || !r->GetI64(&placement) ||
      !GetCount(r, &dims)) {
    return false;
  }
  t->dtype = static_cast<at::ScalarType>(dtype);
  t->placement = static_cast<PlacementKind>(placement);
  t->global_shape.resize(static_cast<size_t>(dims));
  for (int64_t& d : t->global_shape) {
    if (!r->GetI64(&d)) return false;
  }
  if (!GetCount(r, &shards)) return false;
  t->shards.resize(static_cast<size_t>(shards));
  for (ShardRecord& s : t->shards) {
    if (!GetShard(t->path, r, &s)) return false;
  }
  return true;
}

// Decodes one fragment straight into `manifest`.
Status MergeOne(const std::string& fragment, Manifest* manifest) {
  ByteReader r(fragment);
  int64_t files = 0, records = 0;
  if (!GetCount(&r, &files)) return Internal("malformed fragment");
  for (int64_t i = 0; i < files; ++i) {
    FileRecord f;
    if (!GetFile(&r, &f)) return Internal("malformed file record");
    manifest->file_records.push_back(std::move(f));
  }
  if (!GetCount(&r, &records)) return Internal("malformed fragment");
  for (int64_t i = 0; i < records; ++i) {
    TensorRecord record;
    if (!GetTensor(&r, &record)) return Internal("malformed tensor record");
    TensorRecord* target = manifest->FindTensor(record.path);  // O(log n)
    if (!target) return Internal("tensor '" + record.path + "' is not in the plan");
    for (ShardRecord& s : record.shards) target->shards.push_back(std::move(s));
  }
  return r.done() ? Status::Ok() : Internal("trailing bytes after the fragment");
}

}  // namespace

std::string EncodeManifestWire(const Manifest& m) {
  Manifest header;  // everything but the tensors, as JSON
  header.format_version = m.format_version;
  header.step = m.step;
  header.world_size = m.world_size;
  header.created_unix = m.created_unix;
  header.library_version = m.library_version;
  header.torch_version = m.torch_version;
  header.piece_bytes = m.piece_bytes;
  header.files = m.files;
  header.file_records = m.file_records;
  header.scalars = m.scalars;
  header.holders = m.holders;
  ByteWriter w;
  w.PutString(header.ToJson());
  w.PutI64(static_cast<int64_t>(m.tensors.size()));
  for (const TensorRecord& t : m.tensors) {
    PutTensorHeader(t, &w);
    for (const ShardRecord& s : t.shards) PutShard(t.path, s, &w);
  }
  return std::move(w.str());
}

Result<Manifest> DecodeManifestWire(const std::string& bytes) {
  ByteReader r(bytes);
  std::string header;
  int64_t tensors = 0;
  if (!r.GetString(&header)) return Internal("malformed manifest on the wire");
  ASSIGN_OR_RETURN(Manifest m, Manifest::FromJson(header, /*validate=*/false));
  if (!GetCount(&r, &tensors)) return Internal("malformed manifest on the wire");
  m.tensors.resize(static_cast<size_t>(tensors));
  for (TensorRecord& t : m.tensors) {
    if (!GetTensor(&r, &t)) return Internal("malformed tensor record in the manifest on the wire");
  }
  if (!r.done()) return Internal("trailing bytes after the manifest on the wire");
  return m;
}

std::string EncodeFragment(const std::vector<TensorRecord>& records,
                           const std::vector<FileRecord>& files) {
  ByteWriter w;
  w.PutI64(static_cast<int64_t>(files.size()));
  for (const FileRecord& f : files) {
    w.PutString(f.name);
    w.PutI64(static_cast<int64_t>(f.size));
    w.PutI64(static_cast<int64_t>(f.meta_xxh3));
  }
  w.PutI64(static_cast<int64_t>(records.size()));
  for (const TensorRecord& t : records) {
    PutTensorHeader(t, &w);
    for (const ShardRecord& s : t.shards) PutShard(t.path, s, &w);
  }
  return std::move(w.str());
}

Status MergeFragments(const std::vector<std::string>& fragments, Manifest* manifest) {
  for (size_t r = 0; r < fragments.size(); ++r) {
    RETURN_IF_ERROR(
        MergeOne(fragments[r], manifest).Annotate("shards of rank " + std::to_string(r)));
  }
  for (TensorRecord& t : manifest->tensors) {
    std::sort(t.shards.begin(), t.shards.end(), [](const ShardRecord& a, const ShardRecord& b) {
      return a.flat_start < b.flat_start;
    });
  }
  return Status::Ok();
}

}  // namespace distckpt
