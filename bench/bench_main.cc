// One executable for every benchmark program, chosen by the name it is run under
// (build/bench/save_load_bench is a link to it) or by its first argument
// (`distckpt_bench save_load_bench --gib 1`).
#include <cstdio>
#include <cstring>
#include <string>

#include "programs.h"

namespace {

struct Program {
  const char* name;
  int (*main)(int, char**);
};

constexpr Program kPrograms[] = {
    {"async_bench", distckpt::bench::async_bench::Main},
    {"export_bench", distckpt::bench::export_bench::Main},
    {"local_tier_bench", distckpt::bench::local_tier_bench::Main},
    {"mix_bench", distckpt::bench::mix_bench::Main},
    {"save_load_bench", distckpt::bench::save_load_bench::Main},
    {"scale_bench", distckpt::bench::scale_bench::Main},
    {"staging_bench", distckpt::bench::staging_bench::Main},
};

const Program* Find(const std::string& name) {
  for (const Program& p : kPrograms) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

std::string BaseName(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

}  // namespace

int main(int argc, char** argv) {
  if (const Program* p = Find(BaseName(argv[0]))) return p->main(argc, argv);
  if (argc >= 2) {
    if (const Program* p = Find(argv[1])) return p->main(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "usage: %s PROGRAM [ARGS...], PROGRAM one of:", BaseName(argv[0]).c_str());
  for (const Program& p : kPrograms) std::fprintf(stderr, " %s", p.name);
  std::fprintf(stderr, "\n");
  return 2;
}
