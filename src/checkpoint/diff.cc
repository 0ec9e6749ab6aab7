// DiffCheckpoints: both manifests are read, their paths merged in order, and each tensor present
// on both sides with the same dtype and shape is compared in chunks of its flattened elements,
// each chunk assembled from whichever shards cover it on each side.
#include "distckpt/diff.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "core/status_macros.h"
#include "distckpt/manifest.h"
#include "distckpt/manifest_io.h"
#include "io/file_util.h"
#include "io/shard_reader.h"

namespace distckpt {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Side {
  std::string dir;
  Manifest manifest;
  std::unique_ptr<ShardReader> reader;
};

std::string Describe(const TensorRecord& t) {
  return DtypeName(t.dtype) + " " + ShapeString(t.global_shape);
}

Status ReadRange(Side& side, const TensorRecord& t, int64_t begin, int64_t count, char* out) {
  Status st = side.reader->ReadElements(t, begin, count, out);
  return st.ok() ? st : st.Annotate("in checkpoint " + side.dir);
}

// Adds one chunk's counts to `d`: a and b hold the same elements of the two sides.
void CompareChunk(at::Tensor a, at::Tensor b, const DiffOptions& options, Difference* d) {
  if (a.is_complex()) {
    a = at::view_as_real(a).reshape({-1});
    b = at::view_as_real(b).reshape({-1});
  }
  at::Tensor exact = a.eq(b);
  at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  if (a.is_floating_point()) exact = exact | (ad.isnan() & bd.isnan());
  // |a - b|, with exact pairs (equal infinities, NaN and NaN) 0 and NaN or inf - inf as inf.
  at::Tensor diff = at::nan_to_num((ad - bd).abs(), kInf, kInf).masked_fill(exact, 0.0);
  at::Tensor rel = at::nan_to_num(diff / bd.abs(), 0.0, kInf).masked_fill(diff.eq(0.0), 0.0);
  at::Tensor differ = exact.logical_not();
  if (options.atol > 0 || options.rtol > 0) {
    at::Tensor tol = at::nan_to_num(options.atol + options.rtol * bd.abs(), 0.0, kInf);
    differ = differ & (diff.le(tol) & diff.isfinite()).logical_not();
  }
  d->differing += differ.sum().item<int64_t>();
  if (diff.numel() > 0) {
    d->max_abs = std::max(d->max_abs, diff.max().item<double>());
    d->max_rel = std::max(d->max_rel, rel.max().item<double>());
  }
}

Status CompareValues(Side& a, Side& b, const TensorRecord& ta, const TensorRecord& tb,
                     const DiffOptions& options, Difference* d) {
  const int64_t numel = ta.numel();
  const int64_t chunk = std::max<int64_t>(1, options.chunk_bytes / 8);
  const int64_t esize = c10::elementSize(ta.dtype);
  std::vector<char> abuf(static_cast<size_t>(std::min(numel, chunk) * esize));
  std::vector<char> bbuf(abuf.size());
  d->numel = numel;
  for (int64_t begin = 0; begin < numel; begin += chunk) {
    const int64_t count = std::min(chunk, numel - begin);
    RETURN_IF_ERROR(ReadRange(a, ta, begin, count, abuf.data()));
    RETURN_IF_ERROR(ReadRange(b, tb, begin, count, bbuf.data()));
    auto as = at::TensorOptions().dtype(ta.dtype);
    CompareChunk(at::from_blob(abuf.data(), {count}, as), at::from_blob(bbuf.data(), {count}, as),
                 options, d);
  }
  return Status::Ok();
}

bool ScalarsEqual(const ScalarValue& a, const ScalarValue& b, const DiffOptions& options) {
  const double* x = std::get_if<double>(&a);
  const double* y = std::get_if<double>(&b);
  if (!x || !y) return a == b;
  if (*x == *y || (std::isnan(*x) && std::isnan(*y))) return true;
  return (options.atol > 0 || options.rtol > 0) &&
         std::abs(*x - *y) <= options.atol + options.rtol * std::abs(*y);
}

Difference Only(Difference::Kind kind, const std::string& path, const std::string& what) {
  Difference d;
  d.kind = kind;
  d.path = path;
  (kind == Difference::Kind::kOnlyInA ? d.a : d.b) = what;
  return d;
}

bool Excluded(const std::string& path, const DiffOptions& options) {
  for (const std::string& prefix : options.exclude) {
    if (path.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

// The tensor paths of either side that are not excluded, in order.
std::set<std::string> TensorPaths(const Manifest& a, const Manifest& b,
                                  const DiffOptions& options) {
  std::set<std::string> paths;
  for (const auto* m : {&a, &b}) {
    for (const TensorRecord& t : m->tensors) {
      if (!Excluded(t.path, options)) paths.insert(t.path);
    }
  }
  return paths;
}

Status CompareTensors(Side& a, Side& b, const DiffOptions& options, DiffReport* report) {
  for (const std::string& path : TensorPaths(a.manifest, b.manifest, options)) {
    const TensorRecord* ta = a.manifest.FindTensor(path);
    const TensorRecord* tb = b.manifest.FindTensor(path);
    if (!ta || !tb) {
      report->differences.push_back(ta ? Only(Difference::Kind::kOnlyInA, path, Describe(*ta))
                                       : Only(Difference::Kind::kOnlyInB, path, Describe(*tb)));
      continue;
    }
    Difference d;
    d.path = path;
    d.a = Describe(*ta);
    d.b = Describe(*tb);
    d.kind = ta->dtype != tb->dtype ? Difference::Kind::kDtype : Difference::Kind::kShape;
    if (ta->dtype != tb->dtype || ta->global_shape != tb->global_shape) {
      report->differences.push_back(d);
      continue;
    }
    d.kind = Difference::Kind::kValues;
    RETURN_IF_ERROR(CompareValues(a, b, *ta, *tb, options, &d).Annotate("tensor '" + path + "'"));
    ++report->tensors_compared;
    report->elements_compared += d.numel;
    report->max_abs = std::max(report->max_abs, d.max_abs);
    report->max_rel = std::max(report->max_rel, d.max_rel);
    if (d.differing > 0) report->differences.push_back(d);
  }
  return Status::Ok();
}

void CompareScalars(const Side& a, const Side& b, const DiffOptions& options, DiffReport* report) {
  std::set<std::string> paths;
  for (const auto* m : {&a.manifest, &b.manifest}) {
    for (const auto& [path, value] : m->scalars) {
      if (!Excluded(path, options)) paths.insert(path);
    }
  }
  for (const std::string& path : paths) {
    auto ia = a.manifest.scalars.find(path);
    auto ib = b.manifest.scalars.find(path);
    if (ia == a.manifest.scalars.end() || ib == b.manifest.scalars.end()) {
      report->differences.push_back(
          ib == b.manifest.scalars.end()
              ? Only(Difference::Kind::kOnlyInA, path, ScalarText(ia->second))
              : Only(Difference::Kind::kOnlyInB, path, ScalarText(ib->second)));
      continue;
    }
    ++report->scalars_compared;
    if (ScalarsEqual(ia->second, ib->second, options)) continue;
    Difference d;
    d.kind = Difference::Kind::kScalar;
    d.path = path;
    d.a = ScalarText(ia->second);
    d.b = ScalarText(ib->second);
    report->differences.push_back(d);
  }
}

// In place: the reader keeps a pointer to the manifest.
Status Open(Env* env, const std::string& dir, Side* side) {
  side->dir = dir;
  ASSIGN_OR_RETURN(side->manifest, ReadManifest(dir, env));
  side->reader = std::make_unique<ShardReader>(env, dir, &side->manifest, 0);
  return Status::Ok();
}

}  // namespace

const char* DifferenceKindName(Difference::Kind kind) {
  switch (kind) {
    case Difference::Kind::kOnlyInA:
      return "only in A";
    case Difference::Kind::kOnlyInB:
      return "only in B";
    case Difference::Kind::kDtype:
      return "dtype";
    case Difference::Kind::kShape:
      return "shape";
    case Difference::Kind::kValues:
      return "values";
    case Difference::Kind::kScalar:
      return "scalar";
  }
  return "unknown";
}

Result<DiffReport> DiffCheckpoints(const std::string& a_dir, const std::string& b_dir,
                                   const DiffOptions& options) {
  if (!(options.rtol >= 0) || !(options.atol >= 0)) {
    return InvalidArgument("diff: rtol and atol must be non-negative numbers");
  }
  Env* env = EnvOrDefault(options.env);
  Side a, b;
  RETURN_IF_ERROR(Open(env, a_dir, &a));
  RETURN_IF_ERROR(Open(env, b_dir, &b));
  DiffReport report;
  RETURN_IF_ERROR(CompareTensors(a, b, options, &report));
  CompareScalars(a, b, options, &report);
  std::stable_sort(report.differences.begin(), report.differences.end(),
                   [](const Difference& x, const Difference& y) { return x.path < y.path; });
  return report;
}

}  // namespace distckpt
