// Command-line parsing shared by distckpt's programs (the CLI, the example trainer, the
// benchmarks).
//
// CLI11 does the parsing; this adds the project's convention: a mistake (unknown flag, missing
// value, non-number, out-of-range value, missing path) prints one line naming the argument and
// exits with code 2; --help prints the usage and exits 0.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace distckpt::tools {

// Validators with one-line messages ("--steps: expected an integer >= 0, got abc").
CLI::Validator NonNegativeInt();
CLI::Validator PositiveInt();
CLI::Validator PositiveReal();
CLI::Validator IntInRange(int64_t low, int64_t high);

// Returns -1 when `argv` parsed; otherwise the exit code to return (0 after --help, 2 on error),
// having printed the help or the one-line error (unless `quiet`, for all but one MPI rank).
int ParseCommandLine(CLI::App& app, int argc, char** argv, bool quiet = false);

// For programs under mpirun (MPI initialised): every rank parses, rank 0 alone prints. On
// --help or a mistake MPI is finalised and the exit code returned; -1 when `argv` parsed.
int ParseCommandLineOnEveryRank(CLI::App& app, int argc, char** argv);

}  // namespace distckpt::tools
