// The local tier: recent steps in node-local storage, each rank file copied to other hosts.
//
// Save (collective), who makes each call:
//   (rank 0)       picks the temporary directory's name; broadcast.
//   (host leaders) PrepareNamedTmpDir under the local root of their host; vote.
//   (all ranks)    WriteRankFile into their host's directory; vote; all-gather fragments.
//   (all ranks)    send their file to `replicas` partner ranks on the following hosts, which
//                  write it beside their own; vote.
//   (rank 0)       merges the manifest (with the holders of every file); broadcast.
//   (host leaders) Commit on their host, retention of the local steps; vote.
// Restore (collective, Latest with a local tier):
//   (host leaders) list the committed local steps and the files they hold; all-gather.
//   (rank 0)       the newest persistent step (names only, nothing read); broadcast.
//   (all ranks)    pick the newest local step newer than it that the hosts cover; the ranks
//                  of each host share the verifying of every byte it holds; all-gather the
//                  failures; pick again.
//   (all ranks)    each missing file goes from its first verified holder to every host that
//                  lacks it (all-to-all); the receiving leaders verify every byte they got;
//                  hosts without the step commit it; vote. The next Load of the step reads it
//                  once, into place (every byte of it has just been verified on every host).
// A host is the set of ranks with one host name (MPI_Get_processor_name); its leader is its
// lowest rank.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "checkpoint/save_steps.h"
#include "core/guarded.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "distckpt/manifest_io.h"
#include "io/file_util.h"
#include "io/shard_reader.h"
#include "layout/filename.h"
#include "manifest/fragment.h"

namespace distckpt {
namespace {

constexpr uint64_t kMaxRankFileBytes = uint64_t{1} << 40;

struct Topology {
  std::vector<std::string> names;          // host names, in the order of their first rank
  std::vector<int> host_of;                // rank -> host index
  std::vector<int> index_on_host;          // rank -> its place among its host's ranks
  std::vector<std::vector<int>> ranks_on;  // host index -> its ranks, ascending
  int leader(int host) const { return ranks_on[host].front(); }
  int hosts() const { return static_cast<int>(names.size()); }
};

Topology MakeTopology(const std::vector<std::string>& hosts) {
  Topology t;
  std::map<std::string, int> index;
  for (const std::string& h : hosts) {
    auto [it, added] = index.emplace(h, static_cast<int>(t.names.size()));
    if (added) {
      t.names.push_back(h);
      t.ranks_on.emplace_back();
    }
    t.host_of.push_back(it->second);
    t.index_on_host.push_back(static_cast<int>(t.ranks_on[it->second].size()));
    t.ranks_on[it->second].push_back(static_cast<int>(t.host_of.size()) - 1);
  }
  return t;
}

// The rank that keeps copy `k` (1..replicas) of rank r's file: the same place on the k-th
// following host.
int Partner(const Topology& t, int r, int k) {
  const int host = (t.host_of[r] + k) % t.hosts();
  const auto& ranks = t.ranks_on[host];
  return ranks[t.index_on_host[r] % ranks.size()];
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// Tensor bytes of rank r's file under `plan` (HDF5's own structure adds a little).
int64_t PlannedBytes(const SavePlan& plan, int r) {
  std::map<std::string, at::ScalarType> dtypes;
  for (const TensorPlanInfo& t : plan.tensors) dtypes[t.path] = t.dtype;
  int64_t bytes = 0;
  for (const WriteItem& item : plan.per_rank[r]) {
    bytes += item.flat_count * static_cast<int64_t>(c10::elementSize(dtypes[item.path]));
  }
  return bytes;
}

// A file's bytes to send: mapped when the Env can (no copy), read whole otherwise.
class FileBytes {
 public:
  Status Open(Env* env, const std::string& path) {
    ASSIGN_OR_RETURN(file_, env->OpenReadable(path));
    const ReadableFile::Mapping map = file_->Map();
    if (map.data) {
      view_ = std::string_view(map.data, map.size);
      return Status::Ok();
    }
    ASSIGN_OR_RETURN(read_, ReadWholeFile(env, path, kMaxRankFileBytes));
    view_ = read_;
    return Status::Ok();
  }
  std::string_view view() const { return view_; }

 private:
  std::unique_ptr<ReadableFile> file_;
  std::string read_;
  std::string_view view_;
};

// A file this rank sends, and the ranks it goes to.
struct Outgoing {
  std::string_view bytes;
  std::vector<int> to;
};

// A received file, written piece by piece under its temporary name and renamed once whole.
struct Landing {
  std::unique_ptr<WritableFile> file;
  int64_t written = 0;
};

// Every rank sends its `out` files and writes what rank r sends it into in[r]. Files move in
// pieces, so that no rank holds a whole file in a buffer: on a node-local root in memory a
// file's own pages are all it costs. Every rank takes part whatever `local` (this rank's errors)
// says, so that one rank's failure cannot leave the others waiting in a collective. Returns
// the transport's error.
Status MoveFiles(Communicator& comm, Env* env, const std::vector<Outgoing>& out,
                 const std::map<int, std::string>& in, Status* local) {
  constexpr int64_t kPiece = 16 << 20;
  int64_t pieces = 0;
  for (const Outgoing& o : out) {
    pieces = std::max(pieces, (static_cast<int64_t>(o.bytes.size()) + kPiece - 1) / kPiece);
  }
  auto where = [&](int source) {
    return "the copy of rank " + std::to_string(source) + "'s file at '" + in.at(source) + "'";
  };
  std::map<int, Landing> landing;
  for (const auto& [source, path] : in) {
    if (!local->ok()) break;
    auto file = env->NewWritable(TmpFileName(path));
    *local = file.status().Annotate(where(source));
    if (file.ok()) landing[source].file = std::move(file).value();
  }
  std::vector<std::string> counts;
  RETURN_IF_ERROR(comm.AllGather(std::to_string(pieces), &counts));
  for (const std::string& c : counts) pieces = std::max<int64_t>(pieces, std::stoll(c));
  std::vector<std::string> from;
  for (int64_t k = 0; k < pieces; ++k) {
    std::vector<std::string_view> to(comm.size());
    for (const Outgoing& o : out) {
      if (static_cast<int64_t>(o.bytes.size()) <= k * kPiece) continue;
      for (int r : o.to) to[r] = o.bytes.substr(k * kPiece, kPiece);
    }
    RETURN_IF_ERROR(comm.AllToAll(to, &from));
    for (auto& [source, l] : landing) {
      const std::string& got = from[source];
      if (got.empty() || !local->ok()) continue;
      *local = l.file->PWrite(l.written, got.data(), got.size()).Annotate(where(source));
      l.written += static_cast<int64_t>(got.size());
    }
  }
  for (auto& [source, l] : landing) {
    if (!local->ok()) break;
    const std::string& path = in.at(source);
    *local = l.file->Sync();
    if (local->ok()) *local = l.file->Close();
    if (local->ok()) *local = env->Rename(TmpFileName(path), path);
    if (!local->ok()) *local = local->Annotate(where(source));
  }
  return Status::Ok();
}

// What one host holds of one committed local step.
struct HeldStep {
  std::vector<std::string> needed;  // the step's rank files (from its manifest)
  std::set<std::string> present;    // those this host has, with the recorded size
};

// A leader's report: "<step> <needed count> <needed...> <present...>" per line.
std::string ReportHeld(Env* env, const std::string& root, std::map<int64_t, Manifest>* manifests) {
  std::ostringstream out;
  auto names = env->ListDir(root);
  if (!names.ok()) return "";
  for (const std::string& name : names.value()) {
    int64_t step = -1;
    if (ParseCheckpointDirName(name, &step) != DirKind::kCommitted) continue;
    const std::string dir = JoinPath(root, name);
    auto m = ReadManifest(dir, env);
    if (!m.ok()) continue;  // a damaged manifest: this host does not hold the step
    out << step << ' ' << m->files.size();
    for (const std::string& f : m->files) out << ' ' << f;
    for (const FileRecord& f : m->file_records) {
      auto file = env->OpenReadable(JoinPath(dir, f.name));
      if (!file.ok()) continue;
      auto size = file.value()->Size();
      if (size.ok() && size.value() == f.size) out << ' ' << f.name;
    }
    out << '\n';
    (*manifests)[step] = std::move(m).value();
  }
  return out.str();
}

// step -> host -> what it holds.
using HeldMap = std::map<int64_t, std::map<int, HeldStep>>;

HeldMap ParseReports(const std::vector<std::string>& reports, const Topology& t) {
  HeldMap held;
  for (int h = 0; h < t.hosts(); ++h) {
    std::istringstream in(reports[t.leader(h)]);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      int64_t step = -1;
      size_t count = 0;
      words >> step >> count;
      HeldStep& hs = held[step][h];
      std::string w;
      for (size_t i = 0; i < count && words >> w; ++i) hs.needed.push_back(w);
      while (words >> w) hs.present.insert(w);
    }
  }
  return held;
}

// The newest committed step under the persistent root, from directory names alone.
int64_t NewestPersistentStep(Env* env, const std::string& root) {
  int64_t newest = -1;
  auto names = env->ListDir(root);
  if (!names.ok()) return newest;
  for (const std::string& name : names.value()) {
    int64_t step = -1;
    if (ParseCheckpointDirName(name, &step) != DirKind::kCommitted) continue;
    if (env->Exists(JoinPath(JoinPath(root, name), kManifestName))) newest = std::max(newest, step);
  }
  return newest;
}

// This rank's view of the hosts, for the steps below.
struct HostView {
  Communicator& comm;
  Env* env;
  const Topology& topo;
  int rank, my_host;
  bool leader;
};

HostView MakeView(Communicator& comm, Env* env, const Topology& topo) {
  const int rank = comm.rank();
  const int host = topo.host_of[rank];
  return {comm, env, topo, rank, host, topo.leader(host) == rank};
}

// What host `host` will hold of a local step: its ranks' files and the copies it keeps.
int64_t HostBytes(const Topology& topo, const SavePlan& plan, int replicas, int host) {
  int64_t bytes = 0;
  for (int r = 0; r < static_cast<int>(topo.host_of.size()); ++r) {
    bool here = topo.host_of[r] == host;
    for (int k = 1; k <= replicas; ++k) here = here || topo.host_of[Partner(topo, r, k)] == host;
    if (here) bytes += PlannedBytes(plan, r);
  }
  return bytes;
}

// A leader: the step's temporary directory, after checking that the local root has room for it
// (a full tmpfs would take the host's memory).
Status PrepareLocalStep(Env* env, const std::string& root, const std::string& tmp_name,
                        const std::string& host, int64_t host_bytes,
                        std::unique_ptr<FileLock>* in_use) {
  ASSIGN_OR_RETURN(TmpDir tmp, PrepareNamedTmpDir(env, root, tmp_name));
  *in_use = std::move(tmp.in_use);
  auto free = env->AvailableBytes(root);
  if (!free.ok() || free.value() >= host_bytes) return Status::Ok();
  in_use->reset();
  (void)env->RemoveAll(JoinPath(root, tmp_name));
  return IoError("the local root '" + root + "' on host " + host + " has " +
                 std::to_string(free.value()) + " bytes free; a local step needs " +
                 std::to_string(host_bytes) + " there (its ranks' files and the copies it " +
                 "keeps for other hosts)");
}

// Sends this rank's file to its partner on each of the next `replicas` hosts and writes the
// copies it receives into `tmp_dir`. Returns the transport's error; `local`: this rank's.
Status SendCopies(const HostView& v, const SavePlan& plan, const std::string& tmp_dir, int replicas,
                  Status* local) {
  FileBytes mine;
  std::vector<Outgoing> out(1);
  std::map<int, std::string> in;  // sending rank -> where its copy lands here
  if (!plan.per_rank[v.rank].empty()) {
    *local = mine.Open(v.env, JoinPath(tmp_dir, RankFileName(v.rank)));
    out[0].bytes = mine.view();
  }
  for (int k = 1; k <= replicas; ++k) {
    out[0].to.push_back(Partner(v.topo, v.rank, k));
    for (int r = 0; r < v.comm.size(); ++r) {
      if (!plan.per_rank[r].empty() && Partner(v.topo, r, k) == v.rank) {
        in[r] = JoinPath(tmp_dir, RankFileName(r));
      }
    }
  }
  return MoveFiles(v.comm, v.env, out, in, local);
}

// The hosts that hold each rank file: its writer's, then its partners'.
void AddHolders(const Topology& topo, const SavePlan& plan, int replicas, Manifest* m) {
  for (int r = 0; r < static_cast<int>(topo.host_of.size()); ++r) {
    if (plan.per_rank[r].empty()) continue;
    std::vector<std::string>& hosts = m->holders[RankFileName(r)];
    hosts.push_back(topo.names[topo.host_of[r]]);
    for (int k = 1; k <= replicas; ++k) {
      hosts.push_back(topo.names[topo.host_of[Partner(topo, r, k)]]);
    }
  }
}

// Every byte of the files of `step` a host holds is read, its ranks sharing the files (the i-th
// on its (i % ranks)-th rank); a copy that fails is dropped from `hosts` and said in `reason`.
// `manifest`: the step's, read by the leaders as they reported; the other ranks read it here.
// Returns the transport's error.
Status DropDamagedCopies(const HostView& v, const std::string& dir, const Manifest* manifest,
                         int64_t step, std::map<int, HeldStep>* hosts, std::ostream& reason) {
  std::string failed;
  if (auto mine = hosts->find(v.my_host); mine != hosts->end()) {
    Manifest own;
    if (!manifest) {
      auto read = ReadManifest(dir, v.env);
      if (read.ok()) {
        own = std::move(read).value();
        manifest = &own;
      }
    }
    const size_t ranks = v.topo.ranks_on[v.my_host].size();
    const size_t me = v.topo.index_on_host[v.rank];
    size_t i = 0;
    for (const std::string& f : mine->second.present) {
      if (i++ % ranks != me) continue;
      // A manifest that this rank cannot read leaves its share of the copies unverified.
      if (!manifest || !ShardReader(v.env, dir, manifest, 0).VerifyFile(f).ok()) {
        failed += f + '\n';
      }
    }
  }
  std::vector<std::string> failures;
  RETURN_IF_ERROR(v.comm.AllGather(failed, &failures));
  for (int r = 0; r < v.comm.size(); ++r) {
    const int h = v.topo.host_of[r];
    std::istringstream in(failures[r]);
    std::string f;
    while (std::getline(in, f)) {
      hosts->at(h).present.erase(f);
      reason << "local step " << step << ": the copy of " << f << " on " << v.topo.names[h]
             << " fails its checksums; ";
    }
  }
  return Status::Ok();
}

// One file of a gathered step sent from the host that holds it to the hosts that lack it.
struct Transfer {
  std::string file;
  int from = 0;
  std::vector<int> to;
  bool GoesTo(int host) const { return std::find(to.begin(), to.end(), host) != to.end(); }
};

// Transfers grouped into rounds in which a host sends at most one file to each other host, so
// that one exchange moves every file of a round at once (hosts send and receive side by side).
std::vector<std::vector<Transfer>> ScheduleRounds(std::vector<Transfer> transfers) {
  std::vector<std::vector<Transfer>> rounds;
  std::vector<std::set<std::pair<int, int>>> links;  // per round: (from, to) pairs in use
  for (Transfer& t : transfers) {
    size_t r = 0;
    auto busy = [&](size_t round) {
      return std::any_of(t.to.begin(), t.to.end(), [&](int h) {
        return links[round].count({t.from, h}) > 0;
      });
    };
    while (r < rounds.size() && busy(r)) ++r;
    if (r == rounds.size()) {
      rounds.emplace_back();
      links.emplace_back();
    }
    for (int h : t.to) links[r].insert({t.from, h});
    rounds[r].push_back(std::move(t));
  }
  return rounds;
}

bool IsManifestFile(const std::string& name) {
  return name == kManifestName || name == kManifestSumName;
}

// Every byte of the rank files a host received, checked where they landed (against `manifest`,
// or the one received with them); a file that fails is removed.
Status VerifyReceived(Env* env, const std::string& dir, const Manifest* manifest,
                      const std::vector<std::string>& files) {
  Manifest received;
  if (!manifest) {
    ASSIGN_OR_RETURN(received, ReadManifest(dir, env));
    manifest = &received;
  }
  ShardReader reader(env, dir, manifest, 0);
  for (const std::string& f : files) {
    Status s = reader.VerifyFile(f);
    if (!s.ok()) {
      (void)env->RemoveAll(JoinPath(dir, f));
      return s.Annotate("the copy received from another host");
    }
  }
  return Status::Ok();
}

// Moves one round: each source leader maps its files, each receiving leader writes what it got
// into `target`.
Status MoveRound(const HostView& v, const std::string& dir, const std::string& target,
                 const std::vector<Transfer>& round, Status* local) {
  std::vector<FileBytes> sending(round.size());
  std::vector<Outgoing> out;
  std::map<int, std::string> in;  // sending leader -> where its file lands here
  for (size_t i = 0; i < round.size(); ++i) {
    const Transfer& t = round[i];
    if (!v.leader || !local->ok()) continue;
    if (v.my_host == t.from) {
      *local = sending[i].Open(v.env, JoinPath(dir, t.file));
      out.push_back({sending[i].view(), {}});
      for (int h : t.to) out.back().to.push_back(v.topo.leader(h));
    } else if (t.GoesTo(v.my_host)) {
      in[v.topo.leader(t.from)] = JoinPath(target, t.file);
    }
  }
  return MoveFiles(v.comm, v.env, out, in, local);
}

// Sends every file of the step at `dir` (and its manifest) from `source` (file -> host) to the
// leaders of the hosts that lack it; a host without the step commits it. Returns the transport's
// error; `local`: this rank's.
Status GatherStep(const HostView& v, const std::string& root, const std::string& dir, int64_t step,
                  const Manifest* held, const std::map<int, HeldStep>& hosts,
                  std::map<std::string, int> source, Status* local) {
  auto holds = [&](int h, const std::string& f) {
    auto found = hosts.find(h);
    return found != hosts.end() && found->second.present.count(f) > 0;
  };
  const bool have_step = hosts.count(v.my_host) > 0;
  const std::string tmp_name = TmpCheckpointDirName(step, RandomNonce());
  const std::string tmp_dir = JoinPath(root, tmp_name);
  std::unique_ptr<FileLock> in_use;  // held until the step is committed
  if (v.leader && !have_step) {
    auto tmp = PrepareNamedTmpDir(v.env, root, tmp_name);
    *local = tmp.status();
    if (tmp.ok()) in_use = std::move(tmp->in_use);
  }
  std::vector<Transfer> transfers;
  for (const auto& [f, h] : source) transfers.push_back({f, h, {}});
  for (const char* name : {kManifestSumName, kManifestName}) {
    // Every host with the step has its manifest.
    transfers.push_back({name, hosts.begin()->first, {}});
  }
  for (Transfer& t : transfers) {
    for (int h = 0; h < v.topo.hosts(); ++h) {
      if (IsManifestFile(t.file) ? !hosts.count(h) : !holds(h, t.file)) t.to.push_back(h);
    }
  }
  std::erase_if(transfers, [](const Transfer& t) { return t.to.empty(); });
  std::vector<std::string> received;
  for (const Transfer& t : transfers) {
    if (t.GoesTo(v.my_host) && !IsManifestFile(t.file)) received.push_back(t.file);
  }
  const std::string target = have_step ? dir : tmp_dir;
  for (const std::vector<Transfer>& round : ScheduleRounds(std::move(transfers))) {
    RETURN_IF_ERROR(MoveRound(v, dir, target, round, local));
  }
  if (v.leader && local->ok() && !received.empty()) {
    *local = VerifyReceived(v.env, target, have_step ? held : nullptr, received);
  }
  if (v.leader && !have_step && local->ok()) {
    *local = v.env->SyncDir(tmp_dir);
    if (local->ok()) *local = v.env->Rename(tmp_dir, dir);
    if (local->ok()) *local = v.env->SyncDir(root);
  }
  return Status::Ok();
}

}  // namespace

Status Checkpointer::SaveLocal(const StateTree& tree, const SavePlan& plan, int64_t step,
                               std::string* out_dir) {
  const LocalTier& tier = options_.local;
  const Topology topo = MakeTopology(comm_.hosts());
  const HostView v = MakeView(comm_, env_, topo);
  const std::string where =
      "local save of step " + std::to_string(step) + " to '" + tier.root + "'";
  if (tier.replicas < 0) {
    return InvalidArgument(where + ": replicas must be 0 or more, not " +
                           std::to_string(tier.replicas));
  }
  // Fewer hosts than copies (a job resumed on the survivors): as many copies as there are other
  // hosts, said once; the manifest's holders show it.
  const int replicas = std::min(tier.replicas, topo.hosts() - 1);
  if (replicas < tier.replicas && v.rank == 0 && !warned_fewer_replicas_) {
    std::fprintf(stderr,
                 "distckpt: local tier: %d cop%s on other hosts asked for, the job runs on %d "
                 "host(s) (%s): keeping %d\n",
                 tier.replicas, tier.replicas == 1 ? "y" : "ies", topo.hosts(),
                 JoinNames(topo.names).c_str(), replicas);
    warned_fewer_replicas_ = true;
  }
  const int64_t host_bytes = HostBytes(topo, plan, replicas, v.my_host);
  save_stats_.local_host_bytes = host_bytes;
  std::string tmp_name = v.rank == 0 ? TmpCheckpointDirName(step, RandomNonce()) : "";
  RETURN_IF_ERROR(comm_.Broadcast(&tmp_name, 0));
  std::unique_ptr<FileLock> in_use;  // held until the step is committed or removed
  Status local = v.leader ? PrepareLocalStep(env_, tier.root, tmp_name, topo.names[v.my_host],
                                             host_bytes, &in_use)
                          : Status::Ok();
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));
  const std::string tmp_dir = JoinPath(tier.root, tmp_name);

  std::string fragment;
  SaveStats stats;
  local = WriteShare(env_, options_, tmp_dir, v.rank, 0, tree, plan, &fragment, &stats)
              .Annotate("local tier");
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));
  std::vector<std::string> fragments;
  RETURN_IF_ERROR(comm_.AllGather(fragment, &fragments));
  RETURN_IF_ERROR(SendCopies(v, plan, tmp_dir, replicas, &local));
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));

  std::string wire;
  if (v.rank == 0) {
    Manifest m = ManifestSkeleton(tree, plan, step, comm_.size(), options_.piece_bytes);
    local = MergeFragments(fragments, &m);
    AddHolders(topo, plan, replicas, &m);
    if (local.ok()) wire = EncodeManifestWire(m);
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));
  RETURN_IF_ERROR(comm_.Broadcast(&wire, 0));
  const std::string final_dir = JoinPath(tier.root, CheckpointDirName(step));
  if (v.leader) {
    local = Guarded("committing the local step", [&]() -> Status {
      ASSIGN_OR_RETURN(Manifest m, DecodeManifestWire(wire));
      RETURN_IF_ERROR(Commit(env_, tier.root, tmp_dir, final_dir, m));
      RetentionPolicy keep;
      keep.keep_last = std::max(1, tier.keep);
      NoteRetention(CollectGarbage(tier.root, keep, env_));
      return Status::Ok();
    });
    if (!local.ok()) (void)env_->RemoveAll(tmp_dir);
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm_, local).Annotate(where));
  *out_dir = final_dir;
  return Status::Ok();
}

Status Checkpointer::RestoreLocal(int64_t persistent_step, std::string* out_dir, std::string* why) {
  const LocalTier& tier = options_.local;
  const Topology topo = MakeTopology(comm_.hosts());
  const HostView v = MakeView(comm_, env_, topo);
  std::map<int64_t, Manifest> manifests;
  std::vector<std::string> reports;
  RETURN_IF_ERROR(
      comm_.AllGather(v.leader ? ReportHeld(env_, tier.root, &manifests) : "", &reports));
  HeldMap held = ParseReports(reports, topo);
  out_dir->clear();
  std::ostringstream reason;
  for (auto it = held.rbegin(); it != held.rend(); ++it) {
    const int64_t step = it->first;
    if (step <= persistent_step) {
      reason << "the persistent step " << persistent_step << " is as new as local step " << step;
      break;
    }
    std::map<int, HeldStep>& hosts = it->second;
    const std::vector<std::string> needed = hosts.begin()->second.needed;
    const std::string dir = JoinPath(tier.root, CheckpointDirName(step));
    const Manifest* held = manifests.count(step) ? &manifests.at(step) : nullptr;
    // Every byte of what this host holds, checked before any of it is trusted or sent.
    RETURN_IF_ERROR(DropDamagedCopies(v, dir, held, step, &hosts, reason));
    // The first verified holder of every file sends it to each host that lacks it.
    std::map<std::string, int> source;
    for (const std::string& f : needed) {
      for (const auto& [h, hs] : hosts) {
        if (hs.present.count(f)) {
          source[f] = h;
          break;
        }
      }
    }
    if (source.size() != needed.size()) {
      reason << "local step " << step << ": no surviving copy of";
      for (const std::string& f : needed) {
        if (!source.count(f)) reason << ' ' << f;
      }
      reason << "; ";
      continue;
    }
    Status local;
    RETURN_IF_ERROR(GatherStep(v, tier.root, dir, step, held, hosts, source, &local));
    RETURN_IF_ERROR(
        AgreeOnStatus(comm_, local)
            .Annotate("gathering local step " + std::to_string(step) + " in '" + tier.root + "'"));
    *out_dir = dir;
    verified_local_dir_ = dir;
    reason << "local step " << step << " (held by " << hosts.size() << " of " << topo.hosts()
           << " hosts; persistent newest: "
           << (persistent_step < 0 ? std::string("none") : std::to_string(persistent_step)) << ")";
    break;
  }
  if (held.empty()) reason << "no local step on any host";
  *why = reason.str();
  return Status::Ok();
}

std::optional<std::string> Checkpointer::Latest() {
  verified_local_dir_.clear();
  int64_t persistent = -1;
  std::string dir;
  if (comm_.rank() == 0) {
    if (options_.local.root.empty()) {
      dir = LatestCheckpoint(root_, env_).value_or("");
    } else {
      persistent = NewestPersistentStep(env_, root_);
    }
  }
  ThrowIfError(comm_.Broadcast(&dir, 0));
  if (options_.local.root.empty()) {
    latest_reason_ = dir.empty() ? "no committed checkpoint under '" + root_ + "'"
                                 : "the newest committed checkpoint";
  } else {
    std::string wire = std::to_string(persistent);
    ThrowIfError(comm_.Broadcast(&wire, 0));
    persistent = std::stoll(wire);
    std::string why;
    ThrowIfError(RestoreLocal(persistent, &dir, &why));
    if (dir.empty() && persistent >= 0) {
      dir = JoinPath(root_, CheckpointDirName(persistent));
      why = "persistent step " + std::to_string(persistent) + ": " + why;
    }
    latest_reason_ = why;
  }
  if (dir.empty()) return std::nullopt;
  return dir;
}

}  // namespace distckpt
