#include "distckpt/manifest.h"

#include <gtest/gtest.h>
#include <hdf5.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/checksum.h"
#include "distckpt/env.h"
#include "distckpt/manifest_io.h"
#include "manifest/fragment.h"
#include "test_util.h"

namespace distckpt {
namespace {

Manifest Sample() {
  Manifest m;
  m.step = 42;
  m.world_size = 2;
  m.library_version = "test";
  m.torch_version = "x";
  m.piece_bytes = 16;
  m.files = {"rank-00000.h5", "rank-00001.h5"};
  m.scalars["epoch"] = int64_t{3};
  m.scalars["loss"] = std::nan("");
  m.scalars["betas"] = std::vector<double>{0.9, 0.999};
  m.scalars["name"] = std::string("run \"a\"");
  TensorRecord t{"w", at::kFloat, {2, 4}, PlacementKind::kReplicated, {}};
  t.shards.push_back({0, "rank-00000.h5", "w", 0, 4, {1, 4}, 4096, {11}});
  t.shards.push_back({1, "rank-00001.h5", "w", 4, 4, {1, 4}, 4096, {12}});
  m.tensors.push_back(t);
  return m;
}

TEST(Manifest, JsonRoundTripKeepsEveryValueAndBit) {
  auto back = Manifest::FromJson(Sample().ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->step, 42);
  EXPECT_TRUE(std::isnan(std::get<double>(back->scalars.at("loss"))));
  EXPECT_EQ(std::get<std::vector<double>>(back->scalars.at("betas"))[1], 0.999);
  EXPECT_EQ(std::get<std::string>(back->scalars.at("name")), "run \"a\"");
  ASSERT_EQ(back->tensors.size(), 1u);
  EXPECT_EQ(back->tensors[0].shards[1].checksums[0], 12u);
  EXPECT_EQ(back->ToJson(), Sample().ToJson());
}

// Each rank's shard records reach rank 0 as a fragment; merged, they give back the manifest,
// packed shards included, and a damaged fragment is refused naming the rank.
TEST(Fragment, EveryRankFragmentMergesIntoTheManifestAndDamageIsRefused) {
  Manifest want = Sample();
  want.tensors.push_back({"z", at::kHalf, {3}, PlacementKind::kReplicated, {}});
  want.tensors[1].shards.push_back(
      {1, "rank-00001.h5", "_distckpt/pack/float16", 0, 3, {3}, 9000, {7}, true, 12});
  want.file_records = {{"rank-00000.h5", 100, 1}, {"rank-00001.h5", 200, 2}};
  std::vector<std::string> fragments;
  for (int rank = 0; rank < 2; ++rank) {
    std::vector<TensorRecord> records;
    for (const TensorRecord& t : want.tensors) {
      for (const ShardRecord& s : t.shards) {
        if (s.writer_rank == rank) records.push_back({t.path, t.dtype, {}, t.placement, {s}});
      }
    }
    fragments.push_back(EncodeFragment(records, {want.file_records[rank]}));
  }
  std::swap(fragments[0], fragments[1]);  // arrival order does not matter for the shards
  Manifest merged = want;
  for (TensorRecord& t : merged.tensors) t.shards.clear();
  merged.file_records.clear();
  ASSERT_TRUE(MergeFragments(fragments, &merged).ok());
  std::swap(merged.file_records[0], merged.file_records[1]);
  EXPECT_EQ(merged.ToJson(), want.ToJson());

  auto wire = DecodeManifestWire(EncodeManifestWire(want));
  ASSERT_TRUE(wire.ok()) << wire.status().ToString();
  EXPECT_EQ(wire->ToJson(), want.ToJson());
  const std::string bytes = EncodeManifestWire(want);
  EXPECT_FALSE(DecodeManifestWire(bytes.substr(0, bytes.size() - 3)).ok());

  for (size_t cut : {size_t{0}, size_t{7}, fragments[1].size() / 2, fragments[1].size() - 1}) {
    Manifest target = want;
    for (TensorRecord& t : target.tensors) t.shards.clear();
    Status s = MergeFragments({fragments[0], fragments[1].substr(0, cut)}, &target);
    EXPECT_FALSE(s.ok()) << cut;
    EXPECT_NE(s.message().find("rank 1"), std::string::npos) << s.message();
  }
}

TEST(Manifest, TensorsThatAreNotRecordsAreRefused) {
  std::string json = Sample().ToJson();
  const size_t at = json.find("\"tensors\":[") + 11;
  for (const char* bad : {"1,", "\"w\",", "[],"}) {
    std::string damaged = json;
    damaged.insert(at, bad);
    EXPECT_FALSE(Manifest::FromJson(damaged).ok()) << damaged.substr(at, 20);
  }
  std::string missing = json.substr(0, json.find(",\"tensors\"")) + "}";
  EXPECT_FALSE(Manifest::FromJson(missing).ok());
}

// Numbers where integers belong are refused, not cast (a float such as 1e77 converted to an
// integer is undefined behaviour; the fuzzer found it).
TEST(Manifest, NumbersThatAreNotIntegersInRangeAreRefused) {
  const std::string json = Sample().ToJson();
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"\"rank\":0", "\"rank\":1e77"},
           {"\"rank\":0", "\"rank\":4294967296"},
           {"\"step\":42", "\"step\":4.5"},
           {"\"world_size\":2", "\"world_size\":-1e300"},
           {"\"byte_offset\":4096", "\"byte_offset\":-1"},
           {"\"flat_count\":4", "\"flat_count\":18446744073709551615"}}) {
    std::string damaged = json;
    const size_t at = damaged.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    damaged.replace(at, from.size(), to);
    auto parsed = Manifest::FromJson(damaged);
    EXPECT_FALSE(parsed.ok()) << to;
  }
}

TEST(Manifest, RejectsWhatIsNotOurs) {
  EXPECT_EQ(Manifest::FromJson("{\"format\": \"other\"}").status().code(), Code::kCorrupt);
  EXPECT_EQ(Manifest::FromJson("not json").status().code(), Code::kCorrupt);
  EXPECT_FALSE(Manifest::FromJson("").ok());
}

TEST(Manifest, RejectsFilesOutsideTheDirectoryAndBadCoverage) {
  Manifest m = Sample();
  m.tensors[0].shards[0].file = "../../etc/passwd";
  auto r = Manifest::FromJson(m.ToJson());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("leaves the directory"), std::string::npos);

  m = Sample();
  m.tensors[0].shards[1].flat_start = 5;  // gap at element 4
  r = Manifest::FromJson(m.ToJson());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tensor 'w'"), std::string::npos);

  m = Sample();
  m.tensors[0].shards[0].checksums.clear();
  EXPECT_FALSE(Manifest::FromJson(m.ToJson()).ok());
}

// A byte in the middle of the (compressed) index dataset of manifest file `path`.
size_t IndexByte(const std::string& path) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t ds = H5Dopen2(file, "/_distckpt/index", H5P_DEFAULT);
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  hid_t space = H5Dget_space(ds);
  hsize_t chunk_offset[1];
  unsigned filter_mask = 0;
  H5Dget_chunk_info(ds, space, 0, chunk_offset, &filter_mask, &addr, &size);
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(file);
  return addr == HADDR_UNDEF ? std::string::npos : static_cast<size_t>(addr + size / 2);
}

TEST(Manifest, FileRoundTripAndEveryTruncationIsAnError) {
  const std::string dir = testing::ScratchDir("m");
  ASSERT_TRUE(WriteManifest(Env::Default(), dir, Sample()).ok());
  auto back = ReadManifest(dir);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->step, 42);

  const std::string path = dir + "/manifest.h5";
  const auto size = std::filesystem::file_size(path);
  std::string bytes(size, '\0');
  std::ifstream(path, std::ios::binary).read(bytes.data(), static_cast<std::streamsize>(size));
  for (size_t cut = 0; cut < size; cut += 97) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), cut);
    EXPECT_FALSE(ReadManifest(dir).ok()) << "cut at " << cut;
  }
  // Any flipped bit in the index is caught by its checksum or by HDF5.
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), size);
  const size_t where = IndexByte(path);
  ASSERT_NE(where, std::string::npos);
  testing::FlipBit(path, where);
  auto flipped = ReadManifest(dir);
  ASSERT_FALSE(flipped.ok());
  EXPECT_NE(flipped.status().message().find("checksum"), std::string::npos)
      << flipped.status().message();
}

TEST(Manifest, AnHdf5FileThatIsNotOursIsNamed) {
  const std::string dir = testing::ScratchDir("foreign");
  hid_t f = H5Fcreate((dir + "/manifest.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(f);
  auto r = ReadManifest(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a distckpt manifest"), std::string::npos);
  std::ofstream(dir + "/manifest.h5") << "hello";
  r = ReadManifest(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not an HDF5 file"), std::string::npos);
  EXPECT_EQ(ReadManifest(dir + "/nope").status().code(), Code::kNotFound);
}

// Without the sum file (or with one rewritten to match damaged bytes), the index's own checksum
// and HDF5's checks must catch damage by themselves.
TEST(Manifest, WithoutTheSumFileTheIndexChecksumAndHdf5StillCatchDamage) {
  const std::string dir = testing::ScratchDir("nosum");
  ASSERT_TRUE(WriteManifest(Env::Default(), dir, Sample()).ok());
  const std::string path = dir + "/manifest.h5";
  const auto size = std::filesystem::file_size(path);
  std::string bytes(size, '\0');
  std::ifstream(path, std::ios::binary).read(bytes.data(), static_cast<std::streamsize>(size));
  std::filesystem::remove(dir + "/manifest.xxh3");
  ASSERT_TRUE(ReadManifest(dir).ok()) << "a manifest without its sum file still reads";

  // A flipped bit in the compressed index: zlib's own check or the index checksum (an HDF5
  // attribute) catches it, and the error names the index.
  const size_t where = IndexByte(path);
  ASSERT_NE(where, std::string::npos);
  testing::FlipBit(path, where);
  auto flipped = ReadManifest(dir);
  ASSERT_FALSE(flipped.ok());
  EXPECT_NE(flipped.status().message().find("index of"), std::string::npos)
      << flipped.status().message();

  // Truncations and damage to HDF5's own structures: HDF5 refuses them, every one an error.
  for (size_t cut = 0; cut < size; cut += 97) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), cut);
    EXPECT_FALSE(ReadManifest(dir).ok()) << "cut at " << cut;
  }
  int caught = 0, tried = 0;
  for (size_t at = 0; at < std::min<size_t>(size, 2048); at += 61) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), size);
    testing::FlipBit(path, at, 3);
    auto r = ReadManifest(dir);  // must never crash; an OK read must equal the original
    ++tried;
    if (!r.ok()) {
      ++caught;
      EXPECT_NE(r.status().message().find("manifest.h5"), std::string::npos)
          << r.status().message();
    } else {
      EXPECT_EQ(r->ToJson(), Sample().ToJson()) << "a flip at " << at << " changed the manifest";
    }
  }
  EXPECT_GT(caught, 0) << "of " << tried;

  // A sum file rewritten to match damaged bytes does not help the damage through.
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), size);
  testing::FlipBit(path, where);
  char text[32];
  std::string damaged(size, '\0');
  std::ifstream(path, std::ios::binary).read(damaged.data(), static_cast<std::streamsize>(size));
  std::snprintf(text, sizeof(text), "%016llx\n",
                static_cast<unsigned long long>(HashBytes(damaged.data(), damaged.size())));
  std::ofstream(dir + "/manifest.xxh3", std::ios::trunc) << text;
  EXPECT_FALSE(ReadManifest(dir).ok());
}

}  // namespace
}  // namespace distckpt
