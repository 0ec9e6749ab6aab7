// Command-line parsing shared by distckpt's programs, compiled once: CLI11's parser and help
// are large, and each program that parsed inline compiled them again (seconds per program).
#include "tools/command_line.h"

#include <mpi.h>

#include <cstdio>

namespace distckpt::tools {

namespace {

// A whole-string number; false for "abc", "1x" or an empty string.
bool ParseNumber(const std::string& text, bool integer, double* value) {
  if (text.empty()) return false;
  try {
    size_t used = 0;
    *value = integer ? static_cast<double>(std::stoll(text, &used)) : std::stod(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

CLI::Validator NumberAtLeast(double low, bool strictly, bool integer, std::string name) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double v = 0;
        const std::string kind = integer ? "an integer" : "a number";
        if (!ParseNumber(text, integer, &v)) return "expected " + kind + ", got '" + text + "'";
        if (strictly ? v <= low : v < low) {
          return "expected " + kind + (strictly ? " > " : " >= ") + CLI::detail::to_string(low) +
                 ", got " + text;
        }
        return std::string();
      },
      name);
}

}  // namespace

// Validators with one-line messages ("--steps: expected an integer >= 0, got abc").
CLI::Validator NonNegativeInt() { return NumberAtLeast(0, false, true, "INT>=0"); }
CLI::Validator PositiveInt() { return NumberAtLeast(0, true, true, "INT>0"); }
CLI::Validator PositiveReal() { return NumberAtLeast(0, true, false, "NUMBER>0"); }
CLI::Validator IntInRange(int64_t low, int64_t high) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double v = 0;
        if (!ParseNumber(text, true, &v) || v < static_cast<double>(low) ||
            v > static_cast<double>(high)) {
          return "expected an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                 "], got '" + text + "'";
        }
        return std::string();
      },
      "INT in [" + std::to_string(low) + ", " + std::to_string(high) + "]");
}

// Returns -1 when `argv` parsed; otherwise the exit code to return (0 after --help, 2 on error),
// having printed the help or the one-line error (unless `quiet`, for all but one MPI rank).
int ParseCommandLine(CLI::App& app, int argc, char** argv, bool quiet) {
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::CallForHelp&) {
    if (!quiet) std::printf("%s", app.help().c_str());
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    if (!quiet) std::printf("%s", app.help("", CLI::AppFormatMode::All).c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    if (!quiet) {
      std::string what = e.what();
      for (char& c : what) c = c == '\n' ? ' ' : c;
      std::fprintf(stderr, "%s: %s (try --help)\n", app.get_name().c_str(), what.c_str());
    }
    return 2;
  }
}

// For programs under mpirun (MPI initialised): every rank parses, rank 0 alone prints. On
// --help or a mistake MPI is finalised and the exit code returned; -1 when `argv` parsed.
int ParseCommandLineOnEveryRank(CLI::App& app, int argc, char** argv) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int rc = ParseCommandLine(app, argc, argv, /*quiet=*/rank != 0);
  if (rc >= 0) MPI_Finalize();
  return rc;
}

}  // namespace distckpt::tools
