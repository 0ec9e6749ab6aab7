// Fails the k-th Env call of each operation, for every k: save, load, list, retention (gc),
// verify, export and import. Each run must give a clear error naming a file (or succeed where the
// failed call is one the library ignores on purpose), leave the older checkpoint loadable, leave
// the caller's tensors untouched on a failed load, commit nothing that does not verify, and never
// crash or hang.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <functional>

#include "checkpoint/access.h"
#include "distckpt/checkpoint.h"
#include "distckpt/export.h"
#include "fault_env.h"
#include "layout/filename.h"
#include "test_util.h"

namespace distckpt::testing {
namespace {

namespace fs = std::filesystem;

StateTree MakeState(int64_t seed) {
  StateTree tree;
  tree.SetTensor("model_state_dict/w", Pattern({64, 16}, at::kFloat, seed));
  tree.SetTensor("model_state_dict/b", Pattern({16}, at::kBFloat16, seed + 1));
  tree.SetTensor("optimizer_state_dict/state/0/step", Pattern({}, at::kFloat, seed + 2));
  tree.SetScalar("epoch", seed);
  tree.SetScalar("loss", 1.0 / static_cast<double>(seed + 1));
  return tree;
}

// The root holds step 1 (state 1) and step 2 (state 2), both committed.
std::string Baseline(const std::string& name) {
  const std::string root = ScratchDir(name);
  Checkpointer ckpt(root, Comm());
  ckpt.Save(MakeState(1), 1);
  ckpt.Save(MakeState(2), 2);
  return root;
}

// Step `step` under `root` loads (with the default Env) and equals MakeState(seed).
void ExpectLoads(const std::string& root, int64_t step, int64_t seed, const std::string& ctx) {
  const std::string dir = root + "/" + CheckpointDirName(step);
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok() && report->ok()) << ctx;
  StateTree want = MakeState(seed), got = MakeState(99);
  Checkpointer ckpt(root, Comm());
  ckpt.Load(dir, got);
  for (const auto& [path, e] : want.tensors()) {
    EXPECT_TRUE(at::equal(got.tensor(path).tensor, e.tensor)) << ctx << ": " << path;
  }
}

// Every committed checkpoint under root verifies.
void ExpectCommittedVerify(const std::string& root, const std::string& ctx) {
  for (const CheckpointInfo& c : ListCheckpoints(root)) {
    if (!c.committed) continue;
    auto report = VerifyCheckpoint(c.dir);
    EXPECT_TRUE(report.ok() && report->ok()) << ctx << ": " << c.dir << " was committed damaged";
  }
}

// Runs `op` once to count its Env calls, then once per k failing call k; `check` judges each
// run (k, the op's status, the env). Returns the number of calls covered.
int Sweep(const std::string& name, const std::function<std::string()>& setup,
          const std::function<Status(const std::string& root, Env* env)>& op,
          const std::function<void(int k, const std::string& root, const Status& st,
                                   const CountingEnv& env)>& check) {
  CountingEnv counter;
  {
    const std::string root = setup();
    Status st = op(root, &counter);
    EXPECT_TRUE(st.ok()) << name << " without faults: " << st.ToString();
  }
  const int total = counter.calls;
  EXPECT_GT(total, 0) << name;
  for (int k = 1; k <= total; ++k) {
    CountingEnv env;
    env.fail_at = k;
    const std::string root = setup();
    Status st = op(root, &env);
    EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0)
        << name << ", call " << k << " (" << env.failed << "): HDF5 objects left open";
    check(k, root, st, env);
  }
  std::printf("[ sweep    ] %s: %d Env calls, each failed in turn\n", name.c_str(), total);
  return total;
}

// A failed operation's error names a file or directory and says what failed.
void ExpectClearError(const Status& st, const CountingEnv& env, const std::string& ctx) {
  if (st.ok()) return;
  EXPECT_NE(st.message().find("'"), std::string::npos) << ctx << ": " << st.ToString();
  EXPECT_FALSE(env.failed.empty()) << ctx << ": failed without a fault: " << st.ToString();
}

TEST(FaultSweep, Save) {
  Sweep(
      "save", [] { return Baseline("save"); },
      [](const std::string& root, Env* env) {
        CheckpointerOptions options;
        options.env = env;
        Checkpointer ckpt(root, Comm(), options);
        std::string dir;
        return CheckpointerAccess::Save(ckpt, MakeState(3), 3, &dir);
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        const std::string ctx = "save, call " + std::to_string(k) + " (" + env.failed + ")";
        ExpectClearError(st, env, ctx);
        ExpectLoads(root, 2, 2, ctx);
        ExpectLoads(root, 1, 1, ctx);
        ExpectCommittedVerify(root, ctx);
        if (st.ok()) ExpectLoads(root, 3, 3, ctx);
      });
}

TEST(FaultSweep, Load) {
  Sweep(
      "load", [] { return Baseline("load"); },
      [](const std::string& root, Env* env) {
        CheckpointerOptions options;
        options.env = env;
        Checkpointer ckpt(root, Comm(), options);
        StateTree got = MakeState(99);
        Status st = CheckpointerAccess::Load(ckpt, root + "/" + CheckpointDirName(2), got);
        // Untouched on failure, except where the error says the second read (after every
        // byte was verified) failed part-way and names what it overwrote.
        if (st.message().find("partly overwritten") != std::string::npos) return st;
        const StateTree want = MakeState(st.ok() ? 2 : 99);
        for (const auto& [path, e] : want.tensors()) {
          if (!at::equal(got.tensor(path).tensor, e.tensor)) {
            return Internal("tensor '" + path + "' changed (load status: " + st.ToString() + ")");
          }
        }
        return st;
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        const std::string ctx = "load, call " + std::to_string(k) + " (" + env.failed + ")";
        EXPECT_NE(st.code(), Code::kInternal) << ctx << ": " << st.ToString();
        ExpectClearError(st, env, ctx);
      });
}

TEST(FaultSweep, ListAndLatest) {
  Sweep(
      "list", [] { return Baseline("list"); },
      [](const std::string& root, Env* env) {
        auto all = ListCheckpoints(root, env);
        auto latest = LatestCheckpoint(root, env);
        // A failed call may hide checkpoints, never invent one.
        for (const auto& c : all) {
          if (c.step != 1 && c.step != 2)
            return Internal("invented step " + std::to_string(c.step));
        }
        if (latest && *latest != root + "/" + CheckpointDirName(1) &&
            *latest != root + "/" + CheckpointDirName(2)) {
          return Internal("latest is " + *latest);
        }
        return Status::Ok();
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        EXPECT_TRUE(st.ok()) << "list, call " << k << " (" << env.failed << "): " << st.ToString();
        ExpectLoads(root, 2, 2, "list");
      });
}

TEST(FaultSweep, Retention) {
  Sweep(
      "gc",
      [] {
        const std::string root = Baseline("gc");
        fs::create_directories(root + "/.tmp-step-00000007-0000beef");
        return root;
      },
      [](const std::string& root, Env* env) {
        RetentionPolicy keep_one;
        keep_one.keep_last = 1;
        const GcReport report = CollectGarbage(root, keep_one, env);
        const std::vector<std::string>& removed = report.removed;
        // What it says it removed is gone, and it is never the newest; with no fault it is
        // step 1 and the leftover. What it says it could not remove is still there.
        for (const std::string& dir : removed) {
          if (fs::exists(dir)) return Internal("reported removed but still there: " + dir);
          if (dir == root + "/" + CheckpointDirName(2)) return Internal("removed the newest");
        }
        for (const std::string& why : report.failed) {
          if (!fs::exists(why.substr(0, why.find(": ")))) {
            return Internal("reported not removed but gone: " + why);
          }
        }
        const bool step1_gone = !fs::exists(root + "/" + CheckpointDirName(1));
        const bool listed = std::find(removed.begin(), removed.end(),
                                      root + "/" + CheckpointDirName(1)) != removed.end();
        if (step1_gone != listed) return Internal("step 1 removed but not reported, or reverse");
        return Status::Ok();
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        const std::string ctx = "gc, call " + std::to_string(k) + " (" + env.failed + ")";
        EXPECT_TRUE(st.ok()) << ctx << ": " << st.ToString();
        ExpectLoads(root, 2, 2, ctx);  // the newest always stays
        ExpectCommittedVerify(root, ctx);
      });
}

TEST(FaultSweep, Verify) {
  Sweep(
      "verify", [] { return Baseline("verify"); },
      [](const std::string& root, Env* env) {
        auto report = VerifyCheckpoint(root + "/" + CheckpointDirName(2), env);
        if (!report.ok()) return report.status();
        return report->ok() ? Status::Ok() : report->problems.front();
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        const std::string ctx = "verify, call " + std::to_string(k) + " (" + env.failed + ")";
        if (!env.failed.empty()) EXPECT_FALSE(st.ok()) << ctx << ": a failed read went unnoticed";
        ExpectClearError(st, env, ctx);
      });
}

TEST(FaultSweep, Export) {
  Sweep(
      "export", [] { return Baseline("export"); },
      [](const std::string& root, Env* env) {
        ExportOptions options;
        options.env = env;
        return ExportCheckpoint(root + "/" + CheckpointDirName(2), root + "/out.pt", options)
            .status();
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        const std::string ctx = "export, call " + std::to_string(k) + " (" + env.failed + ")";
        ExpectClearError(st, env, ctx);
        if (!st.ok()) EXPECT_FALSE(fs::exists(root + "/out.pt")) << ctx << ": partial file left";
        if (st.ok()) {
          auto tree = ReadPt(root + "/out.pt");
          EXPECT_TRUE(tree.ok() && tree->HasTensor("model_state_dict/w")) << ctx;
        }
        EXPECT_FALSE(fs::exists(root + "/out.pt.tmp")) << ctx << ": temporary file left";
      });
}

TEST(FaultSweep, Import) {
  Sweep(
      "import",
      [] {
        const std::string root = Baseline("import");
        ThrowIfError(ExportCheckpoint(root + "/" + CheckpointDirName(2), root + "/in.pt").status());
        return root;
      },
      [](const std::string& root, Env* env) {
        ImportOptions options;
        options.env = env;
        options.step = 5;
        return ImportPt(root + "/in.pt", root, options).status();
      },
      [](int k, const std::string& root, const Status& st, const CountingEnv& env) {
        const std::string ctx = "import, call " + std::to_string(k) + " (" + env.failed + ")";
        ExpectClearError(st, env, ctx);
        ExpectLoads(root, 2, 2, ctx);
        ExpectCommittedVerify(root, ctx);
        if (st.ok()) ExpectLoads(root, 5, 2, ctx);
      });
}

}  // namespace
}  // namespace distckpt::testing
