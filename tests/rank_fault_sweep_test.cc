// Under mpirun: the k-th Env call fails on one rank only (rank 0, which commits, and the last
// rank), for every k, during a save, a load and the retention (gc) that follows a commit. Every
// rank must end with the same outcome, a failure naming the rank that failed and its host, within
// the collective deadline (a rank that skipped a collective would end the job instead), with the
// older checkpoints intact and the caller's tensors untouched by a failed load.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <functional>

#include "checkpoint/access.h"
#include "distckpt/checkpoint.h"
#include "fault_env.h"
#include "layout/filename.h"
#include "test_util.h"

namespace distckpt::testing {
namespace {

namespace fs = std::filesystem;

StateTree MakeState(int64_t seed) {
  const int rank = Comm().rank(), size = Comm().size();
  StateTree tree;
  // Sharded over the ranks, so that every rank writes and reads a file of its own.
  at::Tensor w = Pattern({12 * size, 16}, at::kFloat, seed);
  tree.SetShardedRows("model_state_dict/w", w.narrow(0, 12 * rank, 12).clone(), {12 * size, 16},
                      12 * rank);
  tree.SetTensor("model_state_dict/b", Pattern({16}, at::kBFloat16, seed + 1));
  tree.SetScalar("epoch", seed);
  return tree;
}

std::string Baseline(const std::string& name) {
  const std::string root = ScratchDir(name);
  Checkpointer ckpt(root, Comm());
  ckpt.Save(MakeState(1), 1);
  ckpt.Save(MakeState(2), 2);
  return root;
}

// Collective. Step `step` verifies and loads on every rank as MakeState(seed).
void ExpectLoads(const std::string& root, int64_t step, int64_t seed, const std::string& ctx) {
  const std::string dir = root + "/" + CheckpointDirName(step);
  if (Comm().rank() == 0) {
    auto report = VerifyCheckpoint(dir);
    EXPECT_TRUE(report.ok() && report->ok()) << ctx << ": " << dir << " does not verify";
  }
  StateTree want = MakeState(seed), got = MakeState(99);
  Checkpointer(root, Comm()).Load(dir, got);
  for (const auto& [path, e] : want.tensors()) {
    EXPECT_TRUE(BitEqual(got.tensor(path).tensor, e.tensor)) << ctx << ": " << path;
  }
}

// Every rank's text, gathered.
std::vector<std::string> Everyone(const std::string& mine) {
  std::vector<std::string> all;
  ThrowIfError(Comm().AllGather(mine, &all));
  return all;
}

// Collective. Runs `op` once with a counting Env on `victim` to count its calls, then once per k
// with call k failing on `victim` alone; checks that every rank saw the same outcome, naming the
// victim and the file, and hands each run to `check`.
void Sweep(const std::string& name, int victim, const std::function<std::string()>& setup,
           const std::function<Status(const std::string& root, Env* env)>& op,
           const std::function<void(const std::string& root, const Status& st,
                                    const std::string& ctx)>& check) {
  const bool me = Comm().rank() == victim;
  std::string total_text;
  {
    CountingEnv counter;
    const std::string root = setup();
    Status st = op(root, me ? &counter : nullptr);
    ASSERT_TRUE(st.ok()) << name << " without faults: " << st.ToString();
    total_text = std::to_string(counter.calls);
  }
  ThrowIfError(Comm().Broadcast(&total_text, victim));
  const int total = std::stoi(total_text);
  ASSERT_GT(total, 0) << name;
  int failed_runs = 0;
  for (int k = 1; k <= total; ++k) {
    CountingEnv env;
    env.fail_at = k;
    const std::string root = setup();
    Status st = op(root, me ? &env : nullptr);
    std::string failed = env.failed;
    ThrowIfError(Comm().Broadcast(&failed, victim));
    const std::string ctx = name + ", rank " + std::to_string(victim) + " failing call " +
                            std::to_string(k) + " (" + failed + ")";
    const std::vector<std::string> outcomes = Everyone(st.ok() ? "ok" : st.message());
    for (const std::string& o : outcomes) EXPECT_EQ(o, outcomes[0]) << ctx << ": outcomes differ";
    if (!st.ok()) {
      ++failed_runs;
      EXPECT_NE(st.message().find("rank " + std::to_string(victim) + " (host "), std::string::npos)
          << ctx << ": " << st.ToString();
      EXPECT_FALSE(failed.empty()) << ctx << ": failed without a fault: " << st.ToString();
      const std::string file = fs::path(failed.substr(failed.find('\'') + 1)).filename();
      EXPECT_NE(st.message().find(file.substr(0, file.size() - 1)), std::string::npos)
          << ctx << ": the error does not name the file: " << st.ToString();
    }
    // A failure leaves no HDF5 file open (HDF5 would close it at MPI_Finalize, through an Env
    // that is gone by then).
    EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0) << ctx << ": HDF5 objects left open";
    check(root, st, ctx);
  }
  if (Comm().rank() == 0) {
    std::printf("[ sweep    ] %s, rank %d of %d: %d Env calls failed in turn, %d runs failed\n",
                name.c_str(), victim, Comm().size(), total, failed_runs);
  }
}

// Rank 0 (it commits) and the last rank.
std::vector<int> Victims() {
  std::vector<int> v{0};
  if (Comm().size() > 1) v.push_back(Comm().size() - 1);
  return v;
}

CheckpointerOptions WithEnv(Env* env) {
  CheckpointerOptions options;
  options.env = env;
  options.collective_timeout_seconds = 20;  // a rank that skips a collective ends the job
  return options;
}

TEST(RankFaultSweep, Save) {
  for (int victim : Victims()) {
    Sweep(
        "save", victim, [] { return Baseline("save"); },
        [](const std::string& root, Env* env) {
          Checkpointer ckpt(root, Comm(), WithEnv(env));
          std::string dir;
          return CheckpointerAccess::Save(ckpt, MakeState(3), 3, &dir);
        },
        [](const std::string& root, const Status& st, const std::string& ctx) {
          ExpectLoads(root, 1, 1, ctx);
          ExpectLoads(root, 2, 2, ctx);
          if (st.ok()) ExpectLoads(root, 3, 3, ctx);
          if (!st.ok()) EXPECT_FALSE(fs::exists(root + "/" + CheckpointDirName(3))) << ctx;
        });
  }
}

TEST(RankFaultSweep, Load) {
  for (int victim : Victims()) {
    Sweep(
        "load", victim, [] { return Baseline("load"); },
        [](const std::string& root, Env* env) {
          StateTree got = MakeState(99);
          Checkpointer ckpt(root, Comm(), WithEnv(env));
          Status st = CheckpointerAccess::Load(ckpt, root + "/" + CheckpointDirName(2), got);
          // Untouched on failure, except where the error says a second read failed part-way.
          if (st.message().find("partly overwritten") != std::string::npos) return st;
          const StateTree want = MakeState(st.ok() ? 2 : 99);
          for (const auto& [path, e] : want.tensors()) {
            if (!BitEqual(got.tensor(path).tensor, e.tensor)) {
              return Internal("tensor '" + path + "' changed (load status: " + st.ToString() + ")");
            }
          }
          return st;
        },
        [](const std::string& root, const Status& st, const std::string& ctx) {
          EXPECT_NE(st.code(), Code::kInternal) << ctx << ": " << st.ToString();
          ExpectLoads(root, 2, 2, ctx);
        });
  }
}

// Retention after the commit, on rank 0: a failed removal keeps the save committed on every
// rank, removes nothing that the policy keeps, and the next gc finishes the job.
TEST(RankFaultSweep, RetentionAfterCommit) {
  Sweep(
      "save with gc", 0,
      [] {
        const std::string root = Baseline("gc");
        if (Comm().rank() == 0) fs::create_directories(root + "/.tmp-step-00000007-0000beef");
        Comm().Barrier();
        return root;
      },
      [](const std::string& root, Env* env) {
        CheckpointerOptions options = WithEnv(env);
        options.retention.keep_last = 2;
        std::string dir;
        Checkpointer ckpt(root, Comm(), options);
        return CheckpointerAccess::Save(ckpt, MakeState(3), 3, &dir);
      },
      [](const std::string& root, const Status& st, const std::string& ctx) {
        ExpectLoads(root, 2, 2, ctx);
        if (!st.ok()) return;
        ExpectLoads(root, 3, 3, ctx);
        if (Comm().rank() == 0) {
          RetentionPolicy keep_two;
          keep_two.keep_last = 2;
          CollectGarbage(root, keep_two);
          std::vector<int64_t> steps;
          for (const CheckpointInfo& c : ListCheckpoints(root)) steps.push_back(c.step);
          EXPECT_EQ(steps, (std::vector<int64_t>{2, 3})) << ctx << ": gc after the fault";
        }
      });
}

}  // namespace
}  // namespace distckpt::testing
