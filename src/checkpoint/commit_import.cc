// Commits a tree read from another format (an import) from one process.
#include "checkpoint/commit_import.h"

#include "checkpoint/access.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"

namespace distckpt {
namespace {
// Host buffers between a piece-by-piece source and the writer: 4 pieces of 8 MiB.
constexpr int64_t kImportStagingBytes = 32 << 20;
}  // namespace

Result<std::string> CommitImport(const StateTree& tree, const std::string& root, int64_t step,
                                 Env* env, CopyEngine* source) {
  auto comm = MakeLocalCommunicator();
  CheckpointerOptions ckpt_options;
  ckpt_options.env = env;
  if (source) {
    ckpt_options.device_staging.engine = source;
    ckpt_options.device_staging.budget_bytes = kImportStagingBytes;
  }
  Checkpointer ckpt(root, *comm, ckpt_options);
  std::string dir;
  RETURN_IF_ERROR(CheckpointerAccess::Save(ckpt, tree, step, &dir));
  return dir;
}

}  // namespace distckpt
