// distckpt: list, inspect and verify checkpoints. One plain process; no mpirun needed.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>

#include "distckpt/checkpoint.h"
#include "distckpt/diff.h"
#include "distckpt/export.h"
#include "distckpt/manifest.h"
#include "distckpt/safetensors.h"
#include "tools/command_line.h"

namespace {

using distckpt::Manifest;

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

std::string ScalarText(const Manifest& m, const std::string& key) {
  auto it = m.scalars.find(key);
  return it == m.scalars.end() ? "-" : distckpt::ScalarText(it->second);
}

std::string UtcTime(double unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  char when[32];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
  return when;
}

// "1": the persistent tier (one copy on shared storage); a local step: the fewest hosts that
// hold any of its files, e.g. "local x2".
std::string Copies(const Manifest& m) {
  if (m.holders.empty()) return "1";
  size_t fewest = SIZE_MAX;
  for (const auto& [file, hosts] : m.holders) fewest = std::min(fewest, hosts.size());
  return "local x" + std::to_string(fewest);
}

int List(const std::string& root) {
  auto all = distckpt::ListCheckpoints(root);
  if (all.empty()) {
    std::printf("no checkpoints under %s\n", root.c_str());
    return 0;
  }
  std::printf("%-8s %-6s %-14s %-10s %-5s %-9s %-19s %-10s %-12s %s\n", "STEP", "EPOCH", "LOSS",
              "SIZE", "WORLD", "COMMITTED", "SAVED (UTC)", "COPIES", "TAGS", "DIRECTORY");
  for (const auto& c : all) {
    std::string tags;
    for (const std::string& t : c.tags) tags += (tags.empty() ? "" : ",") + t;
    if (tags.empty()) tags = "-";
    if (c.manifest) {
      const Manifest& m = *c.manifest;
      std::printf("%-8lld %-6s %-14s %-10s %-5d %-9s %-19s %-10s %-12s %s\n",
                  static_cast<long long>(c.step), ScalarText(m, "epoch").c_str(),
                  ScalarText(m, "loss").c_str(),
                  HumanBytes(static_cast<double>(m.TotalBytes())).c_str(), m.world_size, "yes",
                  UtcTime(m.created_unix).c_str(), Copies(m).c_str(), tags.c_str(), c.dir.c_str());
    } else {
      std::printf("%-8lld %-6s %-14s %-10s %-5s %-9s %-19s %-10s %-12s %s%s%s\n",
                  static_cast<long long>(c.step), "-", "-", "-", "-", "no", "-", "-", "-",
                  c.dir.c_str(), c.problem.empty() ? "" : "  (",
                  c.problem.empty() ? "" : (c.problem + ")").c_str());
    }
  }
  return 0;
}

int Inspect(const std::string& dir, bool json) {
  auto m = distckpt::ReadManifest(dir);
  if (!m.ok()) {
    std::fprintf(stderr, "distckpt inspect: %s\n", m.status().ToString().c_str());
    return 1;
  }
  if (json) {
    std::printf("%s\n", m->ToJson(2).c_str());
    return 0;
  }
  std::printf("checkpoint %s\n  step %lld, saved by %d rank(s) at %s UTC\n", dir.c_str(),
              static_cast<long long>(m->step), m->world_size, UtcTime(m->created_unix).c_str());
  for (const auto& [file, hosts] : m->holders) {
    std::string names;
    for (const std::string& h : hosts) names += (names.empty() ? "" : ", ") + h;
    std::printf("  local tier: %s on %s\n", file.c_str(), names.c_str());
  }
  std::printf("  distckpt %s, LibTorch %s, format version %d, %s in %zu tensor(s)\n",
              m->library_version.c_str(), m->torch_version.c_str(), m->format_version,
              HumanBytes(static_cast<double>(m->TotalBytes())).c_str(), m->tensors.size());
  std::printf("scalars:\n");
  for (const auto& [path, value] : m->scalars) {
    std::printf("  %s = %s\n", path.c_str(), distckpt::ScalarText(value).c_str());
  }
  std::printf("tensors:\n");
  for (const auto& t : m->tensors) {
    std::printf("  %s  %s %s %s\n", t.path.c_str(), distckpt::DtypeName(t.dtype).c_str(),
                distckpt::ShapeString(t.global_shape).c_str(),
                distckpt::PlacementName(t.placement));
    for (const auto& s : t.shards) {
      const std::string range = s.packed ? "[" + std::to_string(s.pack_start) + ":" +
                                               std::to_string(s.pack_start + s.flat_count) + "]"
                                         : "";
      std::printf("      elements [%lld, %lld) in %s:%s%s (rank %d)\n",
                  static_cast<long long>(s.flat_start),
                  static_cast<long long>(s.flat_start + s.flat_count), s.file.c_str(),
                  s.dataset.c_str(), range.c_str(), s.writer_rank);
    }
  }
  return 0;
}

distckpt::ProgressFn TerminalProgress(const char* what);

int Verify(const std::string& dir) {
  auto report = distckpt::VerifyCheckpoint(dir, nullptr, TerminalProgress("verify"));
  if (!report.ok()) {
    std::fprintf(stderr, "distckpt verify: FAILED: %s\n", report.status().ToString().c_str());
    return 1;
  }
  if (!report->ok()) {
    for (const auto& p : report->problems) {
      std::fprintf(stderr, "distckpt verify: %s\n", p.ToString().c_str());
    }
    std::fprintf(stderr, "distckpt verify: FAILED: %zu problem(s) in %s\n", report->problems.size(),
                 dir.c_str());
    return 1;
  }
  std::printf("OK: %s: %d tensor(s), %s read, every checksum matches\n", dir.c_str(),
              report->tensors_checked,
              HumanBytes(static_cast<double>(report->bytes_checked)).c_str());
  return 0;
}

// Bytes done, rate and time left on a terminal; nothing when stderr is not a terminal.
distckpt::ProgressFn TerminalProgress(const char* what) {
  if (!isatty(2)) return nullptr;
  auto start = std::chrono::steady_clock::now();
  return [what, start](int64_t done, int64_t total) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double rate = secs > 0 ? done / secs : 0;
    double left = rate > 0 ? (total - done) / rate : 0;
    std::fprintf(stderr, "\r%s %s / %s  %s/s  %.0f s left   ", what,
                 HumanBytes(static_cast<double>(done)).c_str(),
                 HumanBytes(static_cast<double>(total)).c_str(), HumanBytes(rate).c_str(), left);
    if (done >= total) std::fprintf(stderr, "\n");
  };
}

int ExportPt(const std::string& dir, const std::string& out, bool model_only) {
  distckpt::ExportOptions options;
  options.model_only = model_only;
  options.progress = TerminalProgress("export");
  auto stats = distckpt::ExportCheckpoint(dir, out, options);
  if (!stats.ok()) {
    std::fprintf(stderr, "distckpt export: %s\n", stats.status().ToString().c_str());
    return 1;
  }
  std::printf("wrote %s: %d tensor(s), %s%s; load it with torch.load(\"%s\")\n", out.c_str(),
              stats->tensors, HumanBytes(static_cast<double>(stats->tensor_bytes)).c_str(),
              model_only ? ", model state_dict only" : "", out.c_str());
  return 0;
}

// Under mpirun, every rank writes its share of the bytes.
int ExportSafetensors(const std::string& dir, const std::string& out,
                      distckpt::SafetensorsExportOptions options, distckpt::Communicator& comm) {
  if (comm.rank() == 0) options.progress = TerminalProgress("export");
  auto stats = distckpt::ExportSafetensors(comm, dir, out, options);
  if (!stats.ok()) {
    if (comm.rank() == 0) {
      std::fprintf(stderr, "distckpt export: %s\n", stats.status().ToString().c_str());
    }
    return 1;
  }
  if (comm.rank() == 0) {
    std::printf("wrote %zu file(s) under %s: %d tensor(s), %s, by %d rank(s)\n",
                stats->files.size(), out.c_str(), stats->tensors,
                HumanBytes(static_cast<double>(stats->tensor_bytes)).c_str(), comm.size());
  }
  return 0;
}

int Import(const std::string& in, const std::string& root, int64_t step) {
  distckpt::ImportOptions options;
  options.step = step;
  auto dir = distckpt::IsDcpCheckpoint(in) ? distckpt::ImportDcp(in, root, options)
             : distckpt::IsSafetensors(in) ? distckpt::ImportSafetensors(in, root, options)
                                           : distckpt::ImportPt(in, root, options);
  if (!dir.ok()) {
    std::fprintf(stderr, "distckpt import: %s\n", dir.status().ToString().c_str());
    return 1;
  }
  std::printf("imported %s as %s\n", in.c_str(), dir->c_str());
  return 0;
}

// Exit 1 when a directory could not be removed; one in use is left for a later run.
int Gc(const std::string& root, const distckpt::RetentionPolicy& policy) {
  const distckpt::GcReport report = distckpt::CollectGarbage(root, policy);
  for (const auto& dir : report.removed) std::printf("removed %s\n", dir.c_str());
  for (const auto& dir : report.in_use) std::printf("in use, left for later: %s\n", dir.c_str());
  for (const auto& why : report.failed)
    std::fprintf(stderr, "distckpt gc: cannot remove %s\n", why.c_str());
  std::printf("%zu removed, %zu in use, %zu could not be removed\n", report.removed.size(),
              report.in_use.size(), report.failed.size());
  return report.failed.empty() ? 0 : 1;
}

// A failed catalog call: one line; exit 2 for a bad argument (e.g. a tag name), 1 otherwise.
int Failed(const char* command, const distckpt::Status& st) {
  std::fprintf(stderr, "distckpt %s: %s\n", command, st.ToString().c_str());
  return st.code() == distckpt::Code::kInvalidArgument ? 2 : 1;
}

int Tag(const std::string& dir, const std::string& tag) {
  distckpt::Status st = distckpt::TagCheckpoint(dir, tag);
  if (!st.ok()) return Failed("tag", st);
  std::printf("tagged %s as '%s'\n", dir.c_str(), tag.c_str());
  return 0;
}

int Untag(const std::string& root, const std::string& tag) {
  distckpt::Status st = distckpt::RemoveTag(root, tag);
  if (!st.ok()) return Failed("untag", st);
  std::printf("removed tag '%s' of %s\n", tag.c_str(), root.c_str());
  return 0;
}

int LatestTagged(const std::string& root, const std::string& tag) {
  auto dir = distckpt::FindTag(root, tag);
  if (!dir.ok()) return Failed("latest", dir.status());
  std::printf("%s\n", dir->c_str());
  return 0;
}

int Latest(const std::string& root, bool verified) {
  auto dir = verified ? distckpt::LatestVerifiedCheckpoint(
                            root,
                            [](const std::string& line) {
                              std::fprintf(stderr, "distckpt latest: %s\n", line.c_str());
                            })
                      : distckpt::LatestCheckpoint(root);
  if (!dir) {
    std::fprintf(stderr, "distckpt latest: no %scommitted checkpoint under %s\n",
                 verified ? "good " : "", root.c_str());
    return 1;
  }
  std::printf("%s\n", dir->c_str());
  return 0;
}

nlohmann::json DiffJson(const distckpt::DiffReport& r) {
  nlohmann::json out = {{"equal", r.equal()},
                        {"tensors_compared", r.tensors_compared},
                        {"scalars_compared", r.scalars_compared},
                        {"elements_compared", r.elements_compared},
                        {"max_abs", r.max_abs},
                        {"max_rel", r.max_rel},
                        {"differences", nlohmann::json::array()}};
  for (const auto& d : r.differences) {
    nlohmann::json item = {{"path", d.path}, {"kind", distckpt::DifferenceKindName(d.kind)}};
    if (!d.a.empty()) item["a"] = d.a;
    if (!d.b.empty()) item["b"] = d.b;
    if (d.kind == distckpt::Difference::Kind::kValues) {
      item.update({{"differing", d.differing},
                   {"numel", d.numel},
                   {"max_abs", d.max_abs},
                   {"max_rel", d.max_rel}});
    }
    out["differences"].push_back(item);
  }
  return out;
}

std::string DiffLine(const distckpt::Difference& d) {
  using Kind = distckpt::Difference::Kind;
  char buf[160];
  switch (d.kind) {
    case Kind::kOnlyInA:
      return "only in A: " + d.a;
    case Kind::kOnlyInB:
      return "only in B: " + d.b;
    case Kind::kValues:
      std::snprintf(buf, sizeof(buf),
                    "%s: %lld of %lld elements differ, max abs %.6g, max rel %.6g", d.a.c_str(),
                    static_cast<long long>(d.differing), static_cast<long long>(d.numel), d.max_abs,
                    d.max_rel);
      return buf;
    default:
      return std::string(distckpt::DifferenceKindName(d.kind)) + " " + d.a + " -> " + d.b;
  }
}

// Exit 0: equal within the tolerance; 1: different; 2: either cannot be read.
int Diff(const std::string& a, const std::string& b, const distckpt::DiffOptions& options,
         bool json) {
  auto report = distckpt::DiffCheckpoints(a, b, options);
  if (!report.ok()) {
    std::fprintf(stderr, "distckpt diff: %s\n", report.status().ToString().c_str());
    return 2;
  }
  if (json) {
    std::printf("%s\n", DiffJson(*report).dump(2).c_str());
    return report->equal() ? 0 : 1;
  }
  for (const auto& d : report->differences) {
    std::printf("%s  %s\n", d.path.c_str(), DiffLine(d).c_str());
  }
  std::printf(
      "%s: %lld tensor(s) (%lld elements) and %lld scalar(s) compared, max abs %.6g, "
      "max rel %.6g, %zu difference(s)\n",
      report->equal() ? "EQUAL" : "DIFFERENT", static_cast<long long>(report->tensors_compared),
      static_cast<long long>(report->elements_compared),
      static_cast<long long>(report->scalars_compared), report->max_abs, report->max_rel,
      report->differences.size());
  return report->equal() ? 0 : 1;
}

// A against each of `others`: 0 when every one is equal, 1 when one differs, 2 on an error.
int DiffEach(const std::string& a, const std::vector<std::string>& others,
             const distckpt::DiffOptions& options, bool json) {
  int worst = 0;
  for (const std::string& b : others) {
    if (others.size() > 1 && !json) std::printf("== %s vs %s\n", a.c_str(), b.c_str());
    worst = std::max(worst, Diff(a, b, options, json));
  }
  return worst;
}

// Each subcommand with its arguments; Run() calls the one that was given.
struct Command {
  std::string root, dir, pt, out, format = "pt", tag;
  std::vector<std::string> others;  // diff: B [C ...]
  distckpt::DiffOptions diff;
  distckpt::SafetensorsExportOptions safetensors;
  bool prefix_given = false;
  bool json = false, model_only = false, verified = false;
  int64_t step = -1;
  double collective_timeout = 0;  // seconds; 0: the library's default
  distckpt::RetentionPolicy policy;
};

void AddCommands(CLI::App& app, Command& c) {
  // A repeated option takes its last value (scripts append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  auto* ls = app.add_subcommand("ls", "list the checkpoints under ROOT");
  ls->add_option("ROOT", c.root, "checkpoint root")->required()->check(CLI::ExistingDirectory);
  auto* inspect = app.add_subcommand("inspect", "print a checkpoint's manifest");
  inspect->add_option("CKPT", c.dir, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  inspect->add_flag("--json", c.json, "the whole manifest as JSON");
  auto* verify = app.add_subcommand("verify", "read every byte and check every checksum");
  verify->add_option("CKPT", c.dir, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  auto* exp = app.add_subcommand("export", "write a checkpoint as one .pt file for torch.load");
  exp->add_option("CKPT", c.dir, "checkpoint directory")->required()->check(CLI::ExistingDirectory);
  exp->add_option("OUT", c.out, "the .pt file, .safetensors file or directory to write")
      ->required();
  exp->add_flag("--model-only", c.model_only, "only the model's state_dict");
  exp->add_option("--format", c.format, "pt (torch.load) or safetensors (Hugging Face)")
      ->check(CLI::IsMember({"pt", "safetensors"}));
  exp->add_option("--max-shard-size", c.safetensors.max_shard_bytes,
                  "safetensors: bytes per file of a directory output, e.g. 5GB, 500MB")
      ->transform(CLI::AsSizeValue(true))
      ->check(CLI::PositiveNumber);
  exp->add_option("--prefix", c.safetensors.prefix,
                  "safetensors: only tensors under PREFIX, named without it")
      ->each([&c](const std::string&) { c.prefix_given = true; });
  exp->add_option("--collective-timeout", c.collective_timeout,
                  "safetensors under mpirun: seconds a rank waits for the others before the "
                  "job ends naming the late rank")
      ->check(CLI::PositiveNumber);
  auto* imp = app.add_subcommand(
      "import",
      "commit a torch.save file, a .safetensors file, a safetensors model directory or a "
      "PyTorch DCP checkpoint directory");
  imp->add_option("IN", c.pt, "the .pt or .safetensors file, a model directory or a DCP directory")
      ->required()
      ->check(CLI::ExistingPath);
  imp->add_option("ROOT", c.root, "checkpoint root (created if missing)")->required();
  imp->add_option("--step", c.step, "step to save as (default: the file's step or epoch)")
      ->check(distckpt::tools::IntInRange(0, 99999999));
  auto* gc = app.add_subcommand("gc", "remove leftovers and checkpoints the policy does not keep");
  gc->add_option("ROOT", c.root, "checkpoint root")->required()->check(CLI::ExistingDirectory);
  gc->add_option("--keep-last", c.policy.keep_last, "keep the K newest")
      ->check(distckpt::tools::NonNegativeInt());
  gc->add_option("--keep-best", c.policy.keep_best, "keep the K best by --metric")
      ->check(distckpt::tools::NonNegativeInt());
  gc->add_option("--metric", c.policy.metric, "numeric scalar to rank by (default: loss)");
  gc->add_flag(
      "--higher", [&c](int64_t) { c.policy.lower_is_better = false; }, "higher --metric is better");
  gc->add_flag(
      "--drop-tagged", [&c](int64_t) { c.policy.keep_tagged = false; },
      "tags do not protect a checkpoint (a removed one loses its tags)");
  auto* tag = app.add_subcommand("tag", "name a checkpoint (tagging again moves the name)");
  tag->add_option("CKPT", c.dir, "checkpoint directory")->required()->check(CLI::ExistingDirectory);
  tag->add_option("NAME", c.tag, "the tag, e.g. best")->required();
  auto* untag = app.add_subcommand("untag", "remove a tag (the checkpoint stays)");
  untag->add_option("ROOT", c.root, "checkpoint root")->required()->check(CLI::ExistingDirectory);
  untag->add_option("NAME", c.tag, "the tag")->required();
  auto* diff = app.add_subcommand(
      "diff", "compare two checkpoints tensor by tensor (or A with each of B, C, ...)");
  diff->add_option("A", c.dir, "first checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  diff->add_option("B", c.others, "second checkpoint directory (several: each against A)")
      ->required()
      ->expected(1, -1)
      ->check(CLI::ExistingDirectory);
  diff->add_option("--rtol", c.diff.rtol, "relative tolerance (|a-b| <= atol + rtol*|b|)")
      ->check(CLI::NonNegativeNumber);
  diff->add_option("--atol", c.diff.atol, "absolute tolerance")->check(CLI::NonNegativeNumber);
  diff->add_option("--exclude", c.diff.exclude, "leave out paths starting with PREFIX (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  diff->add_flag("--json", c.json, "the report as JSON");
  auto* latest = app.add_subcommand("latest", "print the newest committed checkpoint");
  latest->add_option("ROOT", c.root, "checkpoint root")->required()->check(CLI::ExistingDirectory);
  latest->add_flag("--verified", c.verified, "the newest one whose every byte verifies");
  latest->add_option("--tag", c.tag, "the checkpoint this tag names instead");
  app.require_subcommand(1);
}

int Run(const CLI::App& app, Command& c, distckpt::Communicator& comm) {
  const std::string name = app.get_subcommands().front()->get_name();
  if (name == "export" && c.format == "safetensors") {
    if (c.model_only && !c.prefix_given) c.safetensors.prefix = "model_state_dict/";
    return ExportSafetensors(c.dir, c.out, c.safetensors, comm);
  }
  if (comm.rank() != 0) return 0;  // the other commands run once, on rank 0
  if (name == "ls") return List(c.root);
  if (name == "inspect") return Inspect(c.dir, c.json);
  if (name == "verify") return Verify(c.dir);
  if (name == "export" && c.format == "pt") return ExportPt(c.dir, c.out, c.model_only);
  if (name == "import") return Import(c.pt, c.root, c.step);
  if (name == "gc") return Gc(c.root, c.policy);
  if (name == "diff") return DiffEach(c.dir, c.others, c.diff, c.json);
  if (name == "tag") return Tag(c.dir, c.tag);
  if (name == "untag") return Untag(c.root, c.tag);
  if (!c.tag.empty()) return LatestTagged(c.root, c.tag);
  return Latest(c.root, c.verified);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(
      "distckpt: list, inspect, verify, compare, export, import, tag and prune checkpoints",
      "distckpt");
  Command command;
  AddCommands(app, command);
  auto known = [&app](const std::string& name) {
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->get_name() == name) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !known(argv[1])) {
    std::fprintf(stderr, "distckpt: unknown command '%s' (try --help)\n", argv[1]);
    return 2;
  }
  const int rc = distckpt::tools::ParseCommandLine(app, argc, argv);
  if (rc >= 0) return rc;
  // Started by mpirun (or srun): a parallel safetensors export; other commands run on rank 0.
  const bool launched =
      std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
  if (launched) MPI_Init(&argc, &argv);
  int result = 0;
  {
    auto comm = distckpt::MakeDefaultCommunicator();
    if (command.collective_timeout > 0) comm->set_collective_timeout(command.collective_timeout);
    result = Run(app, command, *comm);
  }
  if (launched) MPI_Finalize();
  return result;
}
