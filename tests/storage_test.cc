// One process: dtypes, fault injection during save, and every kind of damaged checkpoint.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <tuple>

#include "checkpoint/access.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"
#include "fault_env.h"
#include "layout/filename.h"
#include "test_util.h"

namespace distckpt {
namespace {

namespace fs = std::filesystem;
using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

StateTree SampleTree(int64_t seed) {
  StateTree t;
  t.SetTensor("model_state_dict/w", Pattern({64, 32}, at::kFloat, seed));
  t.SetTensor("model_state_dict/b", Pattern({32}, at::kFloat, seed + 1));
  t.SetScalar("epoch", seed);
  t.SetScalar("loss", 0.5 * static_cast<double>(seed));
  return t;
}

StateTree ZerosLike(const StateTree& tree) {
  StateTree out;
  for (const auto& [path, e] : tree.tensors()) out.SetTensor(path, at::zeros_like(e.tensor));
  return out;
}

TEST(Storage, EveryDtypeRoundTripsBitExactly) {
  const std::string root = testing::ScratchDir("root");
  StateTree tree;
  int seed = 0;
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kChar, at::kShort,
                     at::kInt, at::kLong, at::kByte, at::kBool}) {
    const std::string name = DtypeName(dtype);
    tree.SetTensor("t/" + name + "/scalar", Pattern({}, dtype, ++seed));
    tree.SetTensor("t/" + name + "/vector", Pattern({37}, dtype, ++seed));
    tree.SetTensor("t/" + name + "/cube", Pattern({3, 5, 7}, dtype, ++seed));
  }
  // NaN payloads and negative zero survive too.
  auto special = at::tensor({std::nan("0x12345"), -0.0, INFINITY}, at::kDouble);
  tree.SetTensor("t/special", special);
  tree.SetTensor("t/empty", at::empty({0, 4}));
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(tree, 1);
  StateTree back = ZerosLike(tree);
  ckpt.Load(dir, back);
  for (const auto& [path, e] : tree.tensors()) {
    EXPECT_TRUE(BitEqual(back.tensor(path).tensor, e.tensor)) << path;
  }
  // Every byte was checked against its checksum (at least once; pieces are hashed whole).
  int64_t total = 0;
  for (const auto& [path, e] : tree.tensors()) total += static_cast<int64_t>(e.tensor.nbytes());
  EXPECT_GE(ckpt.last_load_stats().bytes_verified, total);
  EXPECT_GT(total, 0);
}

TEST(Storage, DiskFullFailsCleanlyAndKeepsTheOlderCheckpoint) {
  const std::string root = testing::ScratchDir("root");
  testing::FaultEnv env;
  Checkpointer ckpt(root, Comm(), {&env});
  const StateTree old_tree = SampleTree(1);
  const std::string old_dir = ckpt.Save(old_tree, 1);
  env.write_budget = 1000;
  try {
    ckpt.Save(SampleTree(2), 2);
    FAIL() << "save on a full disk succeeded";
  } catch (const Error& e) {
    EXPECT_TRUE(Contains(e.what(), "No space left on device")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "rank-00000.h5")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "nothing was committed")) << e.what();
  }
  env.write_budget = -1;
  EXPECT_EQ(LatestCheckpoint(root), old_dir);
  EXPECT_FALSE(fs::exists(root + "/step-00000002"));
  for (const auto& c : ListCheckpoints(root)) EXPECT_TRUE(c.committed) << c.dir;
  StateTree back = ZerosLike(old_tree);
  ckpt.Load(old_dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/w").tensor,
                       old_tree.tensor("model_state_dict/w").tensor));
  EXPECT_TRUE(VerifyCheckpoint(old_dir)->ok());
}

TEST(Storage, FailedFsyncOrRenameCommitsNothing) {
  const std::string root = testing::ScratchDir("root");
  testing::FaultEnv env;
  Checkpointer ckpt(root, Comm(), {&env});
  const std::string old_dir = ckpt.Save(SampleTree(1), 1);
  env.fail_sync = true;
  EXPECT_THROW(ckpt.Save(SampleTree(2), 2), Error);
  env.fail_sync = false;
  env.fail_rename = true;
  try {
    ckpt.Save(SampleTree(3), 3);
    FAIL() << "save with a failing rename succeeded";
  } catch (const Error& e) {
    EXPECT_TRUE(Contains(e.what(), "injected fault")) << e.what();
  }
  env.fail_rename = false;
  EXPECT_EQ(LatestCheckpoint(root), old_dir);
  EXPECT_EQ(ListCheckpoints(root).size(), 1u);
  EXPECT_TRUE(VerifyCheckpoint(old_dir)->ok());
}

TEST(Storage, LeftoversOfAnUncommittedSaveAreIgnoredThenRemoved) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  const std::string dir = ckpt.Save(SampleTree(1), 1);
  fs::create_directories(root + "/.tmp-step-00000002-deadbeef");
  std::ofstream(root + "/.tmp-step-00000002-deadbeef/rank-00000.h5") << "half written";
  // A step directory without a manifest (e.g. copied by hand) is not committed either.
  fs::create_directories(root + "/step-00000003");
  EXPECT_EQ(LatestCheckpoint(root), dir);
  int uncommitted = 0;
  for (const auto& c : ListCheckpoints(root)) uncommitted += !c.committed;
  EXPECT_EQ(uncommitted, 2);
  ckpt.Save(SampleTree(4), 4);
  EXPECT_FALSE(fs::exists(root + "/.tmp-step-00000002-deadbeef"));
  EXPECT_EQ(LatestCheckpoint(root), root + "/step-00000004");
}

// Counts the manifests opened through it.
struct ManifestCountingEnv : EnvWrapper {
  ManifestCountingEnv() : EnvWrapper(Env::Default()) {}
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) override {
    if (path.size() >= 12 && path.compare(path.size() - 12, 12, "/manifest.h5") == 0) {
      opened.push_back(path);
    }
    return EnvWrapper::OpenReadable(path);
  }
  std::vector<std::string> opened;
};

TEST(Storage, TheLatestOfManyReadsOneManifestAndSkipsAnUnreadableOne) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  std::vector<std::string> dirs;
  for (int step = 1; step <= 6; ++step) dirs.push_back(ckpt.Save(SampleTree(step), step));
  ManifestCountingEnv env;
  EXPECT_EQ(LatestCheckpoint(root, &env), dirs[5]);
  EXPECT_EQ(env.opened, std::vector<std::string>{dirs[5] + "/manifest.h5"});
  // The newest manifest damaged: the one before it, having read those two alone.
  fs::resize_file(dirs[5] + "/manifest.h5", 100);
  env.opened.clear();
  EXPECT_EQ(LatestCheckpoint(root, &env), dirs[4]);
  EXPECT_EQ(env.opened.size(), 2u);
  EXPECT_EQ(env.opened.back(), dirs[4] + "/manifest.h5");
  // The full listing still reads each one, and says what is wrong with the damaged one.
  const std::vector<CheckpointInfo> all = ListCheckpoints(root);
  ASSERT_EQ(all.size(), 6u);
  EXPECT_TRUE(all.back().committed && !all.back().manifest && !all.back().problem.empty());
  EXPECT_TRUE(all.front().manifest.has_value());
}

// When the save opens its first rank file: a leftover of some other save appears, and
// `distckpt gc` (CollectGarbage) runs.
class GcDuringSaveEnv : public EnvWrapper {
 public:
  GcDuringSaveEnv(std::string root, std::string leftover)
      : EnvWrapper(Env::Default()), root_(std::move(root)), leftover_(std::move(leftover)) {}
  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) override {
    if (!ran_ && path.find("rank-") != std::string::npos) {
      ran_ = true;
      fs::create_directories(leftover_);
      removed_ = CollectGarbage(root_, RetentionPolicy(), target()).removed;
    }
    return target()->OpenWritable(path);
  }
  std::vector<std::string> removed_;

 private:
  std::string root_, leftover_;
  bool ran_ = false;
};

TEST(Storage, GcLeavesASaveInProgressAloneAndRemovesLeftovers) {
  const std::string root = testing::ScratchDir("root");
  const std::string leftover = root + "/.tmp-step-00000001-deadbeef";
  GcDuringSaveEnv env(root, leftover);
  CheckpointerOptions options;
  options.env = &env;
  Checkpointer ckpt(root, Comm(), options);
  const std::string dir = ckpt.Save(SampleTree(2), 2);
  EXPECT_EQ(env.removed_, std::vector<std::string>{leftover});
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_TRUE(VerifyCheckpoint(dir).ok());
  StateTree back = ZerosLike(SampleTree(2));
  ckpt.Load(dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/w").tensor,
                       SampleTree(2).tensor("model_state_dict/w").tensor));
}

TEST(Storage, ResavingAStepReplacesItAtomically) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  ckpt.Save(SampleTree(1), 7);
  const StateTree second = SampleTree(2);
  const std::string dir = ckpt.Save(second, 7);
  StateTree back = ZerosLike(second);
  ckpt.Load(dir, back);
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/b").tensor,
                       second.tensor("model_state_dict/b").tensor));
  EXPECT_EQ(back.GetInt("epoch"), 2);
  EXPECT_EQ(ListCheckpoints(root).size(), 1u);
}

class DamagedCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::ScratchDir("root");
    Checkpointer ckpt(root_, Comm());
    tree_ = SampleTree(5);
    dir_ = ckpt.Save(tree_, 5);
    manifest_ = ReadManifest(dir_).value();
  }
  // Loads into sentinel tensors; returns the error and checks the sentinels were not touched.
  std::string LoadError() {
    Checkpointer ckpt(root_, Comm());
    StateTree dest;
    for (const auto& [path, e] : tree_.tensors()) dest.SetTensor(path, at::full_like(e.tensor, 7));
    try {
      ckpt.Load(dir_, dest);
    } catch (const Error& e) {
      for (const auto& [path, e2] : dest.tensors()) {
        EXPECT_TRUE(at::all(e2.tensor == 7).item<bool>()) << path << " was modified";
      }
      return e.what();
    }
    return "";
  }
  std::string root_, dir_;
  StateTree tree_;
  Manifest manifest_;
};

TEST_F(DamagedCheckpoint, FlippedBitIsCaughtByLoadAndVerifyNamingTensorFileOffset) {
  const ShardRecord& shard = manifest_.FindTensor("model_state_dict/w")->shards[0];
  testing::FlipBit(dir_ + "/" + shard.file, shard.byte_offset + 100, 3);
  const std::string err = LoadError();
  EXPECT_TRUE(Contains(err, "checksum mismatch")) << err;
  EXPECT_TRUE(Contains(err, "model_state_dict/w")) << err;
  EXPECT_TRUE(Contains(err, shard.file)) << err;
  EXPECT_TRUE(Contains(err, "rank 0")) << err;
  auto report = VerifyCheckpoint(dir_);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_TRUE(Contains(report->problems[0].message(), std::to_string(shard.byte_offset)))
      << report->problems[0].message();
}

TEST_F(DamagedCheckpoint, MissingRankFileIsNamed) {
  fs::remove(dir_ + "/rank-00000.h5");
  const std::string err = LoadError();
  EXPECT_TRUE(Contains(err, "rank-00000.h5")) << err;
  EXPECT_TRUE(Contains(err, "does not exist")) << err;
}

TEST_F(DamagedCheckpoint, TruncatedRankFileIsNamed) {
  const std::string file = dir_ + "/rank-00000.h5";
  fs::resize_file(file, fs::file_size(file) - 64);
  const std::string err = LoadError();
  EXPECT_TRUE(Contains(err, "truncated")) << err;
  EXPECT_TRUE(Contains(err, "rank-00000.h5")) << err;
  EXPECT_FALSE(VerifyCheckpoint(dir_)->ok());
}

TEST_F(DamagedCheckpoint, ForeignRankFileIsNamed) {
  std::ofstream(dir_ + "/rank-00000.h5", std::ios::trunc) << "PK\x03\x04 not ours at all";
  const std::string err = LoadError();
  EXPECT_TRUE(Contains(err, "not an HDF5 rank file")) << err;
}

TEST_F(DamagedCheckpoint, MissingDirectoryAndManifestAreNamed) {
  fs::remove(dir_ + "/manifest.h5");
  std::string err = LoadError();
  EXPECT_TRUE(Contains(err, "no manifest.h5")) << err;
  dir_ = root_ + "/step-99999999";
  err = LoadError();
  EXPECT_TRUE(Contains(err, "does not exist")) << err;
}

TEST_F(DamagedCheckpoint, ModelThatDiffersIsNamedAndLeftUntouched) {
  Checkpointer ckpt(root_, Comm());
  auto expect_mismatch = [&](StateTree dest, const std::string& part) {
    auto before = dest.tensor("model_state_dict/w").tensor.clone();
    try {
      ckpt.Load(dir_, dest);
      ADD_FAILURE() << "loaded a mismatching model";
    } catch (const Error& e) {
      EXPECT_TRUE(Contains(e.what(), part)) << e.what();
    }
    EXPECT_TRUE(BitEqual(dest.tensor("model_state_dict/w").tensor, before));
  };
  StateTree wrong_shape;
  wrong_shape.SetTensor("model_state_dict/w", at::ones({64, 33}));
  expect_mismatch(wrong_shape, "has shape [64, 32], destination has [64, 33]");
  StateTree wrong_dtype;
  wrong_dtype.SetTensor("model_state_dict/w", at::ones({64, 32}, at::kDouble));
  expect_mismatch(wrong_dtype, "dtype float32");
  StateTree extra;
  extra.SetTensor("model_state_dict/w", at::ones({64, 32}));
  extra.SetTensor("model_state_dict/missing", at::ones({2}));
  expect_mismatch(extra, "'model_state_dict/missing' is not in the checkpoint");
}

// Any single flipped bit in any file of a checkpoint, and any cut at a 4 KiB boundary, is caught
// by verify (tensor data by piece checksums, HDF5 metadata by the file checksum, the manifest by
// manifest.xxh3); never a crash.
TEST(BitRot, EveryFlippedBitAndEveryTruncationIsCaught) {
  const std::string root = testing::ScratchDir("root");
  CheckpointerOptions options;
  options.piece_bytes = 512;
  Checkpointer ckpt(root, Comm(), options);
  StateTree tree;
  tree.SetTensor("model_state_dict/w", Pattern({40, 30}, at::kFloat, 1));
  tree.SetTensor("model_state_dict/b", Pattern({30}, at::kBFloat16, 2));
  tree.SetScalar("loss", 0.5);
  const std::string dir = ckpt.Save(tree, 1);
  ASSERT_TRUE(VerifyCheckpoint(dir)->ok());
  auto verify_fails = [&] {
    auto report = VerifyCheckpoint(dir);
    return !report.ok() || !report->ok();
  };
  int flips = 0, cuts = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string path = entry.path();
    const auto size = fs::file_size(path);
    std::string original(size, '\0');
    std::ifstream(path, std::ios::binary).read(original.data(), static_cast<std::streamsize>(size));
    for (uint64_t off = 0; off < size; ++off) {
      testing::FlipBit(path, off, static_cast<int>(off % 8));
      EXPECT_TRUE(verify_fails()) << "flipped bit " << off % 8 << " of byte " << off << " in "
                                  << path << " went unnoticed";
      testing::FlipBit(path, off, static_cast<int>(off % 8));
      ++flips;
    }
    for (uint64_t cut = 0; cut < size; cut += 4096) {
      fs::resize_file(path, cut);
      EXPECT_TRUE(verify_fails()) << path << " cut at " << cut << " went unnoticed";
      std::ofstream(path, std::ios::binary | std::ios::trunc)
          .write(original.data(), static_cast<std::streamsize>(size));
      ++cuts;
    }
  }
  EXPECT_TRUE(VerifyCheckpoint(dir)->ok());
  std::printf("checked %d flipped bits and %d truncations\n", flips, cuts);
}

TEST(Retention, KeepLastAndKeepBestAreAUnionAndTheNewestSurvives) {
  const std::string root = testing::ScratchDir("root");
  CheckpointerOptions options;
  options.retention.keep_last = 2;
  options.retention.keep_best = 1;
  Checkpointer ckpt(root, Comm(), options);
  const double losses[] = {5, 1, 4, 3, 6, 2};
  for (int step = 1; step <= 6; ++step) {
    StateTree t = SampleTree(step);
    t.SetScalar("loss", losses[step - 1]);
    ckpt.Save(t, step);
  }
  std::vector<int64_t> steps;
  for (const auto& c : ListCheckpoints(root)) steps.push_back(c.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 5, 6}));
}

TEST(Tags, ASaveWithATagIsNamedMovedKeptByRetentionAndFound) {
  const std::string root = testing::ScratchDir("root");
  CheckpointerOptions options;
  options.retention.keep_last = 1;
  options.persist_every = 10;  // a tagged save goes to the root whatever the cadence
  Checkpointer ckpt(root, Comm(), options);
  EXPECT_EQ(ckpt.Save(SampleTree(1), 1, "best"), JoinPath(root, "step-00000001"));
  ckpt.Save(SampleTree(2), 2);  // not due: nothing written
  ckpt.Save(SampleTree(3), 3, "before-lr-drop");
  ckpt.Save(SampleTree(10), 10);
  std::vector<int64_t> steps;
  for (const auto& c : ListCheckpoints(root)) steps.push_back(c.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 3, 10}));  // keep_last 1 + the two tagged ones
  EXPECT_EQ(ListCheckpoints(root).front().tags, std::vector<std::string>{"best"});
  EXPECT_EQ(FindTag(root, "best").value(), JoinPath(root, "step-00000001"));

  // Tagging again moves the name; the checkpoint it left is no longer protected.
  ASSERT_TRUE(TagCheckpoint(JoinPath(root, "step-00000010"), "best").ok());
  EXPECT_EQ(FindTag(root, "best").value(), JoinPath(root, "step-00000010"));
  EXPECT_EQ(CollectGarbage(root, options.retention).removed,
            std::vector<std::string>{JoinPath(root, "step-00000001")});

  // Told that tags do not protect: the tagged step 3 goes, and its tag with it.
  RetentionPolicy drop = options.retention;
  drop.keep_tagged = false;
  EXPECT_EQ(CollectGarbage(root, drop).removed,
            std::vector<std::string>{JoinPath(root, "step-00000003")});
  EXPECT_EQ(ListTags(root),
            (std::map<std::string, std::string>{{"best", JoinPath(root, "step-00000010")}}));

  // Errors: a bad name (before anything is written), no such tag, not a checkpoint.
  std::string dir;
  EXPECT_EQ(CheckpointerAccess::Save(ckpt, SampleTree(11), 11, &dir, "no/slash").code(),
            Code::kInvalidArgument);
  EXPECT_FALSE(fs::exists(JoinPath(root, "step-00000011")));
  EXPECT_EQ(FindTag(root, "nope").status().code(), Code::kNotFound);
  EXPECT_TRUE(Contains(FindTag(root, "nope").status().message(), root));
  EXPECT_EQ(TagCheckpoint(JoinPath(root, "step-00000002"), "x").code(), Code::kNotFound);
  ASSERT_TRUE(RemoveTag(root, "best").ok());
  EXPECT_EQ(RemoveTag(root, "best").code(), Code::kNotFound);
  EXPECT_TRUE(ListTags(root).empty());
}

TEST(Retention, ACheckpointBeingLoadedIsNotDeleted) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  const std::string first = ckpt.Save(SampleTree(1), 1);
  ckpt.Save(SampleTree(2), 2);
  RetentionPolicy policy;
  policy.keep_last = 1;
  {
    LoadGuard reading(first);
    const GcReport report = CollectGarbage(root, policy);
    EXPECT_TRUE(report.removed.empty());
    EXPECT_EQ(report.in_use, std::vector<std::string>{first});
    EXPECT_TRUE(report.failed.empty());
    EXPECT_TRUE(fs::exists(first));
  }
  const GcReport report = CollectGarbage(root, policy);
  EXPECT_EQ(report.removed, std::vector<std::string>{first});
  EXPECT_TRUE(report.in_use.empty() && report.failed.empty());
  EXPECT_FALSE(fs::exists(first));
}

TEST(Retention, WhatCannotBeRemovedIsReportedWithItsError) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  const std::string first = ckpt.Save(SampleTree(1), 1);
  ckpt.Save(SampleTree(2), 2);
  const std::string leftover = root + "/.tmp-step-00000003-0000beef";
  fs::create_directories(leftover);
  RetentionPolicy policy;
  policy.keep_last = 1;
  testing::FaultEnv env;
  env.fail_remove = true;
  const GcReport report = CollectGarbage(root, policy, &env);
  EXPECT_TRUE(report.removed.empty());
  EXPECT_TRUE(report.in_use.empty());
  ASSERT_EQ(report.failed.size(), 2u);
  for (const std::string& dir : {first, leftover}) {
    const bool named = std::any_of(report.failed.begin(), report.failed.end(), [&](auto& f) {
      return f.rfind(dir + ": ", 0) == 0 && Contains(f, "Read-only file system");
    });
    EXPECT_TRUE(named) << dir << " is not reported with its error";
    EXPECT_TRUE(fs::exists(dir));
  }
}

TEST(Retention, ARootThatCannotBeListedIsReportedNotTakenForEmpty) {
  const std::string missing = testing::ScratchDir("root") + "/missing";
  RetentionPolicy policy;
  policy.keep_last = 1;
  const GcReport report = CollectGarbage(missing, policy);
  EXPECT_TRUE(report.removed.empty() && report.in_use.empty());
  ASSERT_EQ(report.failed.size(), 1u);
  EXPECT_EQ(report.failed[0].rfind(missing + ": ", 0), 0u) << report.failed[0];
  EXPECT_TRUE(Contains(report.failed[0], "does not exist")) << report.failed[0];
}

TEST(Retention, ASaveReportsWhatItsRetentionCouldNotRemove) {
  const std::string root = testing::ScratchDir("root");
  testing::FaultEnv env;
  CheckpointerOptions options;
  options.env = &env;
  options.retention.keep_last = 1;
  Checkpointer ckpt(root, Comm(), options);
  const std::string first = ckpt.Save(SampleTree(1), 1);
  EXPECT_TRUE(ckpt.last_save_stats().retention_failed.empty());
  env.fail_remove = true;
  ::testing::internal::CaptureStderr();
  ckpt.Save(SampleTree(2), 2);
  const std::vector<std::string> failed = ckpt.last_save_stats().retention_failed;
  ckpt.Save(SampleTree(3), 3);  // fails again, said once
  const std::string said = ::testing::internal::GetCapturedStderr();
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].rfind(first + ": ", 0), 0u) << failed[0];
  EXPECT_TRUE(Contains(failed[0], "Read-only file system")) << failed[0];
  EXPECT_EQ(ckpt.last_save_stats().retention_failed.size(), 2u);  // steps 1 and 2
  EXPECT_TRUE(fs::exists(first));
  EXPECT_TRUE(Contains(said, "retention could not remove " + first + ": ")) << said;
  EXPECT_EQ(said.find(first + ": "), said.rfind(first + ": ")) << said;
  env.fail_remove = false;
  const std::string fourth = ckpt.Save(SampleTree(4), 4);
  EXPECT_TRUE(ckpt.last_save_stats().retention_failed.empty());
  EXPECT_EQ(LatestCheckpoint(root), fourth);
  EXPECT_FALSE(fs::exists(first));
  EXPECT_EQ(ListCheckpoints(root).size(), 1u);
}

TEST(Fallback, DamagedNewestFallsBackToTheLastGoodOne) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  const StateTree good = SampleTree(1);
  const std::string good_dir = ckpt.Save(good, 1);
  const std::string bad_dir = ckpt.Save(SampleTree(2), 2);
  const Manifest m = ReadManifest(bad_dir).value();
  const ShardRecord& s = m.tensors[0].shards[0];
  testing::FlipBit(bad_dir + "/" + s.file, s.byte_offset + 3);
  std::vector<std::string> logged;
  auto log = [&](const std::string& line) { logged.push_back(line); };
  EXPECT_EQ(LatestVerifiedCheckpoint(root, log), good_dir);
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_TRUE(Contains(logged[0], "step-00000002")) << logged[0];

  StateTree back = ZerosLike(good);
  logged.clear();
  const LoadOptions fall_back{.fall_back = true, .on_fall_back = log};
  EXPECT_EQ(ckpt.Load("", back, fall_back), good_dir);  // "": the newest under root
  EXPECT_TRUE(
      BitEqual(back.tensor("model_state_dict/w").tensor, good.tensor("model_state_dict/w").tensor));
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_TRUE(Contains(logged[0], "falling back")) << logged[0];

  // Named explicitly, the damaged one falls back too; without fall_back it is an error.
  logged.clear();
  back = ZerosLike(good);
  EXPECT_EQ(ckpt.Load(bad_dir, back, fall_back), good_dir);
  EXPECT_EQ(logged.size(), 1u);
  try {
    ckpt.Load(bad_dir, back);
    ADD_FAILURE() << "a damaged checkpoint loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), Code::kCorrupt) << e.what();
  }

  // A model that does not match is not "damage": no silent fall back.
  StateTree wrong;
  wrong.SetTensor("model_state_dict/w", at::zeros({3}));
  EXPECT_THROW(ckpt.Load("", wrong, fall_back), Error);
}

TEST(Fallback, TheNewestOfAnEmptyRootIsNotFound) {
  const std::string root = testing::ScratchDir("empty");
  Checkpointer ckpt(root, Comm());
  StateTree tree = SampleTree(1);
  EXPECT_FALSE(ckpt.Latest().has_value());
  EXPECT_FALSE(LatestCheckpoint(root).has_value());
  EXPECT_FALSE(FindCheckpoint(root, 1).has_value());
  try {
    ckpt.Load("", tree, LoadOptions{.fall_back = true});
    ADD_FAILURE() << "loaded from an empty root";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), Code::kNotFound) << e.what();
    EXPECT_TRUE(Contains(e.what(), root)) << e.what();
  }
  const std::string dir = ckpt.Save(tree, 1);
  EXPECT_EQ(FindCheckpoint(root, 1), dir);
  EXPECT_EQ(ckpt.Latest(), dir);
  EXPECT_FALSE(FindCheckpoint(root, 2).has_value());
}

// Storage that takes 50 ms per write.
class SlowEnv : public testing::FaultEnv {
 public:
  Result<std::unique_ptr<WritableFile>> OpenWritable(const std::string& path) override {
    auto file = target()->OpenWritable(path);
    if (!file.ok()) return file;
    return std::unique_ptr<WritableFile>(new SlowFile(std::move(file).value()));
  }

 private:
  class SlowFile : public WritableFile {
   public:
    explicit SlowFile(std::unique_ptr<WritableFile> base) : base_(std::move(base)) {}
    Status PWrite(uint64_t offset, const void* data, size_t size) override {
      usleep(50000);
      return base_->PWrite(offset, data, size);
    }
    Status Sync() override { return base_->Sync(); }
    Status Truncate(uint64_t size) override { return base_->Truncate(size); }
    Status Close() override { return base_->Close(); }
    const std::string& path() const override { return base_->path(); }

   private:
    std::unique_ptr<WritableFile> base_;
  };
};

TEST(TimeLimit, ASaveOnSlowStorageGivesUpWithAClearError) {
  const std::string root = testing::ScratchDir("root");
  SlowEnv slow;
  CheckpointerOptions options;
  options.env = &slow;
  options.save_timeout_seconds = 0.08;
  options.pack_below_bytes = 0;  // one slow write per tensor
  Checkpointer ckpt(root, Comm(), options);
  StateTree tree;
  for (int i = 0; i < 5; ++i) tree.SetTensor("t" + std::to_string(i), at::ones({4}));
  try {
    ckpt.Save(tree, 1);
    FAIL() << "a save on slow storage did not time out";
  } catch (const Error& e) {
    EXPECT_TRUE(Contains(e.what(), "did not finish within its time limit")) << e.what();
  }
  EXPECT_FALSE(LatestCheckpoint(root).has_value());
}

// Storage that returns different bytes the second time the same range of tensor data is read,
// as if the checkpoint were overwritten between the verification and the read into place.
class ChangingEnv : public testing::FaultEnv {
 public:
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) override {
    auto file = target()->OpenReadable(path);
    if (!file.ok()) return file;
    return std::unique_ptr<ReadableFile>(new ChangingFile(this, std::move(file).value()));
  }
  std::set<std::tuple<std::string, uint64_t, size_t>> seen;

 private:
  class ChangingFile : public ReadableFile {
   public:
    ChangingFile(ChangingEnv* env, std::unique_ptr<ReadableFile> base)
        : env_(env), base_(std::move(base)) {}
    Status PRead(uint64_t offset, void* data, size_t size) override {
      RETURN_IF_ERROR(base_->PRead(offset, data, size));
      const bool again = !env_->seen.insert({path(), offset, size}).second;
      if (again && size >= 1024) static_cast<char*>(data)[size / 2] ^= 0x10;
      return Status::Ok();
    }
    Result<uint64_t> Size() override { return base_->Size(); }
    const std::string& path() const override { return base_->path(); }

   private:
    ChangingEnv* env_;
    std::unique_ptr<ReadableFile> base_;
  };
};

TEST(VerifyThenPlace, LoadsIntoPlaceWithoutStagingAndCatchesBytesThatChangeInBetween) {
  const std::string root = testing::ScratchDir("root");
  const StateTree saved = SampleTree(3);
  const std::string dir = Checkpointer(root, Comm()).Save(saved, 1);
  {
    // The normal case: verified, then read straight into the destination.
    Checkpointer ckpt(root, Comm());
    StateTree back = ZerosLike(saved);
    const void* before = back.tensor("model_state_dict/w").tensor.data_ptr();
    ckpt.Load(dir, back);
    EXPECT_EQ(back.tensor("model_state_dict/w").tensor.data_ptr(), before);
    EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/w").tensor,
                         saved.tensor("model_state_dict/w").tensor));
    EXPECT_GT(ckpt.last_load_stats().bytes_reread, 0);
    EXPECT_EQ(ckpt.last_load_stats().bytes_reread, ckpt.last_load_stats().bytes_read);
  }
  ChangingEnv changing;
  Checkpointer ckpt(root, Comm(), {&changing});
  StateTree back = ZerosLike(saved);
  try {
    ckpt.Load(dir, back);
    FAIL() << "bytes that changed after verification were accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(Contains(e.what(), "could not be read again after it was verified")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "checksum mismatch")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "model_state_dict/")) << e.what();
  }
}

// A repeated save of the same shapes reuses the plan; another shape plans afresh. Both load.
TEST(Storage, ARepeatedSaveReusesThePlan) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm());
  StateTree tree;
  tree.SetTensor("w", Pattern({64, 3}, at::kFloat, 1));
  tree.SetTensor("b", Pattern({3}, at::kDouble, 2));
  ckpt.Save(tree, 1);
  EXPECT_FALSE(ckpt.last_save_stats().plan_reused);
  tree.mutable_tensors()["w"].tensor.add_(1);  // new values, same shapes
  const std::string second = ckpt.Save(tree, 2);
  EXPECT_TRUE(ckpt.last_save_stats().plan_reused);
  tree.SetTensor("w", Pattern({65, 3}, at::kFloat, 3));  // a new shape
  const std::string third = ckpt.Save(tree, 3);
  EXPECT_FALSE(ckpt.last_save_stats().plan_reused);
  for (const auto& [dir, rows] : {std::pair{second, 64}, std::pair{third, 65}}) {
    StateTree back;
    back.SetTensor("w", at::zeros({rows, 3}));
    back.SetTensor("b", at::zeros({3}, at::kDouble));
    ckpt.Load(dir, back);
    EXPECT_EQ(ValueOrThrow(ReadManifest(dir)).FindTensor("w")->global_shape,
              (std::vector<int64_t>{rows, 3}));
    EXPECT_TRUE(BitEqual(back.tensor("b").tensor, tree.tensor("b").tensor));
  }
  StateTree back;
  back.SetTensor("w", at::zeros({65, 3}));
  ckpt.Load(third, back);
  EXPECT_TRUE(BitEqual(back.tensor("w").tensor, tree.tensor("w").tensor));
}

}  // namespace
}  // namespace distckpt

namespace distckpt {
namespace {

// A local root whose file system has `free` bytes left.
class SmallDiskEnv : public EnvWrapper {
 public:
  explicit SmallDiskEnv(int64_t free) : EnvWrapper(Env::Default()), free_(free) {}
  Result<int64_t> AvailableBytes(const std::string&) override { return free_; }

 private:
  int64_t free_;
};

TEST(LocalTier, AFullLocalRootIsRefusedBeforeAnyWriteAndKeepsTheOlderStep) {
  const std::string root = testing::ScratchDir("persistent");
  const std::string local = testing::ScratchDir("local");
  CheckpointerOptions options;
  options.local = {local, 1, 0, 2};  // one host: no copies elsewhere
  options.persist_every = 0;         // the local tier alone
  Checkpointer ckpt(root, Comm(), options);
  const std::string first = ckpt.Save(SampleTree(1), 1);
  EXPECT_EQ(first, local + "/step-00000001");
  EXPECT_GT(ckpt.last_save_stats().local_host_bytes, 0);

  SmallDiskEnv small(100);
  options.env = &small;
  Checkpointer full(root, Comm(), options);
  try {
    full.Save(SampleTree(2), 2);
    ADD_FAILURE() << "saved into a full local root";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), Code::kIoError) << e.what();
    EXPECT_TRUE(Contains(e.what(), "has 100 bytes free")) << e.what();
    EXPECT_TRUE(Contains(e.what(), local)) << e.what();
  }
  EXPECT_FALSE(fs::exists(local + "/step-00000002"));
  // The older local step is the one to resume from; nothing went to the persistent root.
  EXPECT_EQ(ckpt.Latest(), first);
  EXPECT_TRUE(Contains(ckpt.latest_reason(), "local step 1")) << ckpt.latest_reason();
  EXPECT_FALSE(fs::exists(root + "/step-00000001"));
  StateTree back = ZerosLike(SampleTree(1));
  EXPECT_EQ(ckpt.Load("", back), first);
  EXPECT_TRUE(BitEqual(back.tensor("model_state_dict/w").tensor,
                       SampleTree(1).tensor("model_state_dict/w").tensor));
}

// Both tiers due at one step: what the retention of each could not remove is reported.
TEST(LocalTier, RetentionFailuresOfBothTiersAreReported) {
  const std::string root = testing::ScratchDir("persistent");
  const std::string local = testing::ScratchDir("local");
  testing::FaultEnv env;
  CheckpointerOptions options;
  options.env = &env;
  options.local = {local, 1, 0, 1};  // every step, one host, keep 1
  options.persist_every = 2;
  options.retention.keep_last = 1;
  Checkpointer ckpt(root, Comm(), options);
  ckpt.Save(SampleTree(1), 1);
  ckpt.Save(SampleTree(2), 2);  // local step 1 goes
  EXPECT_TRUE(ckpt.last_save_stats().retention_failed.empty());
  env.fail_remove = true;
  ::testing::internal::CaptureStderr();
  ckpt.Save(SampleTree(3), 3);  // local only: local step 2 stays
  EXPECT_EQ(ckpt.last_save_stats().retention_failed.size(), 1u);
  ckpt.Save(SampleTree(4), 4);  // both: local steps 2 and 3, persistent step 2 stay
  ::testing::internal::GetCapturedStderr();
  const std::vector<std::string>& failed = ckpt.last_save_stats().retention_failed;
  EXPECT_EQ(failed.size(), 3u);
  for (const std::string& dir :
       {local + "/step-00000002", local + "/step-00000003", root + "/step-00000002"}) {
    const bool named = std::any_of(failed.begin(), failed.end(), [&](const std::string& f) {
      return f.rfind(dir + ": ", 0) == 0;
    });
    EXPECT_TRUE(named) << dir << " is not reported";
    EXPECT_TRUE(fs::exists(dir));
  }
}

// Latest() verifies every byte of the local step it picks, so the Load that follows reads each
// byte once, into place; any other load verifies first and reads again.
TEST(LocalTier, TheStepLatestVerifiedIsReadOnceAndOnlyOnce) {
  const std::string root = testing::ScratchDir("persistent");
  const std::string local = testing::ScratchDir("local");
  CheckpointerOptions options;
  options.local = {local, 1, 0, 1};
  options.persist_every = 0;
  const StateTree tree = SampleTree(3);
  const std::string dir = Checkpointer(root, Comm(), options).Save(tree, 3);
  const at::Tensor& saved = tree.tensor("model_state_dict/w").tensor;

  Checkpointer ckpt(root, Comm(), options);
  StateTree plain = ZerosLike(SampleTree(3));
  ckpt.Load(dir, plain);
  EXPECT_GT(ckpt.last_load_stats().bytes_reread, 0);

  ASSERT_EQ(ckpt.Latest(), dir);
  StateTree once = ZerosLike(SampleTree(3));
  ckpt.Load(dir, once);
  EXPECT_GT(ckpt.last_load_stats().bytes_read, 0);
  EXPECT_EQ(ckpt.last_load_stats().bytes_reread, 0);
  EXPECT_GE(ckpt.last_load_stats().bytes_verified, saved.nbytes());
  EXPECT_TRUE(BitEqual(once.tensor("model_state_dict/w").tensor, saved));

  StateTree again = ZerosLike(SampleTree(3));
  ckpt.Load(dir, again);
  EXPECT_GT(ckpt.last_load_stats().bytes_reread, 0);
  EXPECT_TRUE(BitEqual(again.tensor("model_state_dict/w").tensor, saved));
}

}  // namespace
}  // namespace distckpt
