// libFuzzer target over the readers of untrusted bytes: the manifest index (JSON), the .pt pickle
// reader, and a rank file's bytes read back against a valid manifest (load and verify path).
#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "distckpt/checkpoint.h"
#include "distckpt/manifest.h"
#include "pt/pickle.h"

namespace {

// A real one-tensor checkpoint (real checksums) whose rank file the fuzzer replaces; its rank
// file also seeds the corpus, so mutations reach the checksum verifier instead of stopping at
// the first structural check.
const std::string& FixtureDir() {
  static const std::string dir = [] {
    std::string base = std::getenv("FUZZ_TMP") ? std::getenv("FUZZ_TMP") : "/tmp";
    std::string root = base + "/distckpt-fuzz-" + std::to_string(::getpid());
    std::filesystem::remove_all(root);
    auto comm = distckpt::MakeLocalCommunicator();
    distckpt::CheckpointerOptions options;
    options.piece_bytes = 64;
    distckpt::Checkpointer ckpt(root, *comm, options);
    distckpt::StateTree tree;
    tree.SetTensor("w", at::arange(32, at::kFloat).reshape({4, 8}));
    return ckpt.Save(tree, 1);
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
