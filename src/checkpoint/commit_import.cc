// Commits a tree read from another format (an import) from one process.
#include "checkpoint/commit_import.h"

#include "checkpoint/access.h"
#include "core/status_macros.h"
#include "distckpt/checkpoint.h"

namespace distckpt {

Result<std::string> CommitImport(const StateTree& tree, const std::string& root, int64_t step,
                                 Env* env) {
  auto comm = MakeLocalCommunicator();
  CheckpointerOptions ckpt_options;
  ckpt_options.env = env;
  Checkpointer ckpt(root, *comm, ckpt_options);
  std::string dir;
  RETURN_IF_ERROR(CheckpointerAccess::Save(ckpt, tree, step, &dir));
  return dir;
}

}  // namespace distckpt
