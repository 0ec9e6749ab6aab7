// Command-line parsing shared by distckpt's programs (the CLI, the example trainer, the
// benchmarks).
//
// CLI11 does the parsing; this adds the project's convention: a mistake (unknown flag, missing
// value, non-number, out-of-range value, missing path) prints one line naming the argument and
// exits with code 2; --help prints the usage and exits 0.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

namespace distckpt::tools {

// Returns -1 when `argv` parsed; otherwise the exit code to return (0 after --help, 2 on error),
// having printed the help or the one-line error (unless `quiet`, for all but one MPI rank).
inline int ParseCommandLine(CLI::App& app, int argc, char** argv, bool quiet = false) {
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

}  // namespace distckpt::tools
