// libFuzzer target over the readers of untrusted bytes: the manifest index (JSON), the .pt pickle
// reader, and a rank file's bytes read back against a valid manifest (load and verify path).
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "distckpt/checkpoint.h"
#include "distckpt/manifest.h"
#include "format/pickle.h"

namespace {

// A valid one-tensor checkpoint whose rank file the fuzzer replaces.
const std::string& FixtureDir() {
  static const std::string dir = [] {
    std::string d = std::string(std::getenv("FUZZ_TMP") ? std::getenv("FUZZ_TMP") : "/tmp") +
                    "/distckpt-fuzz-" + std::to_string(::getpid());
    std::filesystem::remove_all(d);
    distckpt::Manifest m;
    m.piece_bytes = 64;
    m.files = {"rank-00000.h5"};
    m.file_records = {{"rank-00000.h5", 256, 0}};
    distckpt::TensorRecord t{"w", at::kFloat, {4, 8}, distckpt::PlacementKind::kReplicated, {}};
    t.shards.push_back({0, "rank-00000.h5", "w", 0, 32, {4, 8}, 128, {1, 2}});
    m.tensors.push_back(t);
    std::filesystem::create_directories(d);
    distckpt::ThrowIfError(distckpt::WriteManifest(distckpt::Env::Default(), d, m));
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)distckpt::Manifest::FromJson(bytes);
  (void)distckpt::Unpickle(bytes);
  { std::ofstream(FixtureDir() + "/rank-00000.h5", std::ios::binary | std::ios::trunc) << bytes; }
  (void)distckpt::VerifyCheckpoint(FixtureDir());
  return 0;
}
