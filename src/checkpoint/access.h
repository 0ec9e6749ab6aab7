// The Checkpointer's internal entry points, for the library's own callers (AsyncCheckpointer,
// import, the state-dict helpers) and the tests: the Status forms of Save and Load, the shared
// manifest read and the fall-back loop, and planning once to save with the
// same plan later. Not installed.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "distckpt/checkpoint.h"
#include "plan/plan.h"

namespace distckpt {

class CheckpointerAccess {
 public:
  static Status Save(Checkpointer& c, const StateTree& tree, int64_t step, std::string* dir,
                     const std::string& tag = "") {
    return c.SaveStatus(tree, step, dir, tag);
  }
  static Status Load(Checkpointer& c, const std::string& dir, StateTree& tree,
                     const LoadOptions& options = {}) {
    return c.LoadStatus(dir, tree, options);
  }
  // Collective: rank 0 reads the manifest of `dir` and shares it; throws Error.
  static Manifest SharedManifest(Checkpointer& c, const std::string& dir) {
    Manifest m;
    ThrowIfError(c.ShareManifest(dir, &m));
    return m;
  }
  static std::string LoadFallingBack(Checkpointer& c, const std::string& dir,
                                     const LoadOptions& options,
                                     const std::function<void(const std::string&)>& load) {
    return c.LoadFallingBack(dir, options, load);
  }
  static std::vector<std::string> CommittedNewestFirst(Checkpointer& c) {
    return c.CommittedNewestFirst(c.root());
  }
  static Status Plan(Checkpointer& c, const StateTree& tree,
                     std::shared_ptr<const SavePlan>* plan) {
    return c.SharedPlan(tree, plan);
  }
  static Status SavePlanned(Checkpointer& c, const StateTree& tree, const SavePlan& plan,
                            int64_t step, std::string* dir, const std::string& tag = "") {
    return c.SaveDue(tree, plan, step, dir, tag);  // the tiers due at `step`
  }
};

}  // namespace distckpt
