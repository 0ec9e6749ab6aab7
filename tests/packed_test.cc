// Format version 2: small shards packed one dataset per dtype; version 1 checkpoints still load.
#include <filesystem>
#include <map>

#include "distckpt/checkpoint.h"
#include "distckpt/manifest_io.h"
#include "test_util.h"

namespace distckpt {
namespace {

using testing::BitEqual;
using testing::Comm;
using testing::Pattern;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

StateTree ZerosLike(const StateTree& tree) {
  StateTree out;
  for (const auto& [path, e] : tree.tensors()) out.SetTensor(path, at::zeros_like(e.tensor));
  return out;
}

constexpr int64_t kPackBelow = 1024;

CheckpointerOptions SmallPacks() {
  CheckpointerOptions options;
  options.pack_below_bytes = kPackBelow;
  options.piece_bytes = 256;  // several pieces per packed tensor, none shared between tensors
  return options;
}

// Tensors on both sides of the pack threshold, in every dtype, empty and 0-dim ones included.
StateTree BoundaryTree() {
  StateTree tree;
  tree.SetTensor("f32/just_below", Pattern({255}, at::kFloat, 1));  // 1020 bytes: packed
  tree.SetTensor("f32/at", Pattern({256}, at::kFloat, 2));          // 1024 bytes: own dataset
  tree.SetTensor("f32/above", Pattern({4, 65}, at::kFloat, 3));     // 1040 bytes: own dataset
  tree.SetTensor("f32/empty", at::empty({0, 4}));
  tree.SetTensor("f32/zero_dim", Pattern({}, at::kFloat, 4));
  int seed = 10;
  for (auto dtype : {at::kDouble, at::kHalf, at::kBFloat16, at::kChar, at::kShort, at::kInt,
                     at::kLong, at::kByte, at::kBool}) {
    const std::string name = DtypeName(dtype);
    const int64_t below = kPackBelow / c10::elementSize(dtype) - 1;
    tree.SetTensor(name + "/scalar", Pattern({}, dtype, ++seed));
    tree.SetTensor(name + "/below", Pattern({below}, dtype, ++seed));
    tree.SetTensor(name + "/at", Pattern({below + 1}, dtype, ++seed));
  }
  return tree;
}

TEST(PackedLayout, ShardsBelowTheThresholdShareOnePackPerDtype) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm(), SmallPacks());
  StateTree tree = BoundaryTree();
  const std::string dir = ckpt.Save(tree, 1);
  const Manifest m = ReadManifest(dir).value();
  EXPECT_EQ(m.format_version, 2);
  std::map<std::string, int64_t> pack_end;  // next free element of each pack
  for (const TensorRecord& t : m.tensors) {
    if (t.numel() == 0) {  // nothing to store
      EXPECT_TRUE(t.shards.empty()) << t.path;
      continue;
    }
    ASSERT_EQ(t.shards.size(), 1u) << t.path;
    const ShardRecord& s = t.shards[0];
    const bool small = t.nbytes() < kPackBelow;
    EXPECT_EQ(s.packed, small) << t.path;
    if (!small) {
      EXPECT_EQ(s.dataset, t.path);
      continue;
    }
    EXPECT_EQ(s.dataset, "_distckpt/pack/" + DtypeName(t.dtype)) << t.path;
    EXPECT_EQ(s.stored_shape, std::vector<int64_t>{t.numel()}) << t.path;
    // Packs are filled in path order without gaps.
    EXPECT_EQ(s.pack_start, pack_end[s.dataset]) << t.path;
    pack_end[s.dataset] += s.flat_count;
  }
  EXPECT_EQ(pack_end.size(), 10u);  // one pack per dtype
  StateTree back = ZerosLike(tree);
  ckpt.Load(dir, back);
  for (const auto& [path, e] : tree.tensors()) {
    EXPECT_TRUE(BitEqual(back.tensor(path).tensor, e.tensor)) << path;
  }
  EXPECT_TRUE(VerifyCheckpoint(dir)->ok());
}

// A flipped bit anywhere in a pack is reported for the tensor it belongs to and no other, and a
// load fails without touching the destination.
TEST(PackedLayout, AFlippedBitInAPackIsAttributedToItsTensor) {
  const std::string root = testing::ScratchDir("root");
  Checkpointer ckpt(root, Comm(), SmallPacks());
  StateTree tree;
  for (int i = 0; i < 12; ++i) {
    const auto dtype = i % 3 == 0 ? at::kHalf : at::kFloat;
    tree.SetTensor("m/t" + std::to_string(i), Pattern({3 + 17 * i}, dtype, i));
  }
  const std::string dir = ckpt.Save(tree, 1);
  const Manifest m = ReadManifest(dir).value();
  int flipped = 0;
  for (const TensorRecord& t : m.tensors) {
    const ShardRecord& s = t.shards[0];
    ASSERT_TRUE(s.packed) << t.path;
    for (uint64_t at_byte : {uint64_t{0}, static_cast<uint64_t>(t.nbytes() - 1)}) {
      const std::string file = dir + "/" + s.file;
      testing::FlipBit(file, s.byte_offset + at_byte, 5);
      auto report = VerifyCheckpoint(dir);
      ASSERT_TRUE(report.ok());
      ASSERT_EQ(report->problems.size(), 1u) << t.path;
      const std::string message = report->problems[0].message();
      EXPECT_TRUE(Contains(message, "'" + t.path + "'")) << message;
      EXPECT_TRUE(Contains(message, s.file)) << message;
      StateTree dest = ZerosLike(tree);
      try {
        ckpt.Load(dir, dest);
        ADD_FAILURE() << "loaded a damaged pack";
      } catch (const Error& e) {
        EXPECT_TRUE(Contains(e.what(), "'" + t.path + "'")) << e.what();
      }
      for (const auto& [path, e] : dest.tensors()) {
        EXPECT_TRUE(at::all(e.tensor == 0).item<bool>()) << path << " was modified";
      }
      testing::FlipBit(file, s.byte_offset + at_byte, 5);
      ++flipped;
    }
  }
  EXPECT_EQ(flipped, 24);
  EXPECT_TRUE(VerifyCheckpoint(dir)->ok());
}

// Files are read through a read-only mapping by default and through pread with DISTCKPT_MMAP=0
// (and under any Env that does not map): both check every piece, read the same bytes and catch
// the same damage.
TEST(ReadPaths, MappedAndCopiedReadsVerifyTheSameBytes) {
  const std::string root = testing::ScratchDir("root");
  CheckpointerOptions options = SmallPacks();
  Checkpointer ckpt(root, Comm(), options);
  StateTree tree = BoundaryTree();
  tree.SetTensor("big", Pattern({300, 7}, at::kFloat, 99));  // several pieces, its own dataset
  const std::string dir = ckpt.Save(tree, 1);
  const ShardRecord shard = ReadManifest(dir).value().FindTensor("big")->shards[0];
  LoadStats stats[2];
  for (int mapped = 0; mapped < 2; ++mapped) {
    setenv("DISTCKPT_MMAP", mapped ? "1" : "0", 1);
    StateTree back = ZerosLike(tree);
    ckpt.Load(dir, back);
    for (const auto& [path, e] : tree.tensors()) {
      EXPECT_TRUE(BitEqual(back.tensor(path).tensor, e.tensor)) << path << " mapped " << mapped;
    }
    stats[mapped] = ckpt.last_load_stats();
    testing::FlipBit(dir + "/" + shard.file, shard.byte_offset + 1000, 2);
    auto report = VerifyCheckpoint(dir);
    ASSERT_TRUE(report.ok());
    ASSERT_EQ(report->problems.size(), 1u) << "mapped " << mapped;
    EXPECT_TRUE(Contains(report->problems[0].message(), "'big'"));
    testing::FlipBit(dir + "/" + shard.file, shard.byte_offset + 1000, 2);
  }
  unsetenv("DISTCKPT_MMAP");
  EXPECT_EQ(stats[0].bytes_read, stats[1].bytes_read);
  EXPECT_EQ(stats[0].bytes_verified, stats[1].bytes_verified);
  EXPECT_GT(stats[1].bytes_verified, 0);
}

// tests/data/v1: written by the release before packing (dtype_writer, one dataset per
// tensor). It must keep loading, verifying and re-saving.
TEST(FormatVersion1, TheFixtureLoadsVerifiesAndResavesAsVersion2) {
  const std::string fixture = std::string(DISTCKPT_SOURCE_DIR) + "/tests/data/v1";
  const std::string dir = fixture + "/step-00000001";
  const Manifest m = ReadManifest(dir).value();
  EXPECT_EQ(m.format_version, 1);
  for (const TensorRecord& t : m.tensors) EXPECT_FALSE(t.shards[0].packed) << t.path;
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->tensors_checked, 10);

  auto values = at::tensor({-2.5, -1.0, 0.0, 0.5, 1.0, 3.0}, at::kDouble).reshape({2, 3});
  StateTree want;
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kChar, at::kShort,
                     at::kInt, at::kLong, at::kByte}) {
    auto v = at::isIntegralType(dtype, false) ? values.abs().to(dtype) : values.to(dtype);
    want.SetTensor("model_state_dict/" + DtypeName(dtype), v);
  }
  want.SetTensor("model_state_dict/bool", values.gt(0));
  StateTree back = ZerosLike(want);
  Checkpointer reader(fixture, Comm());
  reader.Load(dir, back);
  for (const auto& [path, e] : want.tensors()) {
    EXPECT_TRUE(BitEqual(back.tensor(path).tensor, e.tensor)) << path;
  }
  EXPECT_EQ(std::get<int64_t>(back.scalars().at("epoch")), 7);

  Checkpointer writer(testing::ScratchDir("root"), Comm());
  const Manifest resaved = ReadManifest(writer.Save(back, 2)).value();
  EXPECT_EQ(resaved.format_version, kFormatVersion);
  EXPECT_TRUE(resaved.tensors[0].shards[0].packed);
}

TEST(FormatVersion, ANewerVersionIsRefusedNamingBoth) {
  Manifest m;
  m.format_version = kFormatVersion + 1;
  auto parsed = Manifest::FromJson(m.ToJson());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), Code::kMismatch);
  EXPECT_TRUE(Contains(parsed.status().message(), std::to_string(kFormatVersion + 1)))
      << parsed.status().message();
}

}  // namespace
}  // namespace distckpt
