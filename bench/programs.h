// The benchmark programs. They are built into one executable (bench/bench_main.cc), compiled as
// one translation unit: LibTorch's inline code is generated once instead of once per program.
#pragma once

namespace distckpt::bench {

namespace async_bench {
int Main(int argc, char** argv);
}
namespace export_bench {
int Main(int argc, char** argv);
}
namespace local_tier_bench {
int Main(int argc, char** argv);
}
namespace mix_bench {
int Main(int argc, char** argv);
}
namespace save_load_bench {
int Main(int argc, char** argv);
}
namespace scale_bench {
int Main(int argc, char** argv);
}
namespace staging_bench {
int Main(int argc, char** argv);
}

}  // namespace distckpt::bench
