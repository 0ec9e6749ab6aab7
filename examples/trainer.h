// The example trainer's job, shared by distckpt-train and the test that runs many jobs in one
// launch: its command-line options and one training run over a given communicator.
#pragma once

#include <cstdint>
#include <string>

#include "distckpt/comm.h"
#include "tools/command_line.h"

namespace distckpt_train {

struct Args {
  std::string ckpt_dir;
  int64_t steps = 20;
  int64_t save_every = 5;
  bool resume = false;
  int zero = 0;
  std::string optimizer = "adam";
  std::string model = "mlp";
  std::string log_samples;
  double lr = 1e-2;
  int64_t seed = 1234;
  int64_t global_batch = 96;
  int64_t micro_batches = 12;
  int64_t dataset_size = 960;
  int keep_last = 0;
  bool async = false;
  double collective_timeout = 600;
  std::string local_root;
  int64_t local_every = 1;
  int64_t persist_every = 0;  // 0: --save-every
  int replicas = 1;
  std::string tag;  // the last step is saved under this tag
};

void AddOptions(CLI::App& app, Args* a);

// One job on `comm`: trains (resuming first with --resume) and saves as the options say.
// Returns the process exit code; throws distckpt::Error or c10::Error on failure.
int Train(const Args& a, distckpt::Communicator& comm);

}  // namespace distckpt_train
