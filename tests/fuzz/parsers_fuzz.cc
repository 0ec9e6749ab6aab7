// libFuzzer target over the readers of untrusted bytes: the manifest index (JSON), the .pt pickle
// reader, and a rank file's bytes read back against a valid manifest (load and verify path).
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "distckpt/checkpoint.h"  // VerifyCheckpoint
#include "distckpt/manifest.h"
#include "pt/pickle.h"

namespace {

// A private copy of a real checkpoint (real checksums; FUZZ_FIXTURE, written by the suite's
// dtype_writer) whose rank file the fuzzer replaces; its rank file also seeds the corpus, so
// mutations reach the checksum verifier instead of stopping at the first structural check.
const std::string& FixtureDir() {
  static const std::string dir = [] {
    std::string base = std::getenv("FUZZ_TMP") ? std::getenv("FUZZ_TMP") : "/tmp";
    std::string copy = base + "/distckpt-fuzz-" + std::to_string(::getpid());
    std::filesystem::remove_all(copy);
    std::filesystem::copy(std::getenv("FUZZ_FIXTURE"), copy,
                          std::filesystem::copy_options::recursive);
    return copy;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* corpus = std::getenv("FUZZ_CORPUS");
  if (corpus) {
    std::filesystem::copy_file(FixtureDir() + "/rank-00000.h5",
                               std::string(corpus) + "/rank-00000.h5",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)distckpt::Manifest::FromJson(bytes);
  (void)distckpt::Unpickle(bytes);
  (void)distckpt::UnpickleObjects(bytes);  // DCP metadata: any class, recorded by name
  { std::ofstream(FixtureDir() + "/rank-00000.h5", std::ios::binary | std::ios::trunc) << bytes; }
  (void)distckpt::VerifyCheckpoint(FixtureDir());
  return 0;
}
