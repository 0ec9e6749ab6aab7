// The Checkpointer's internal entry points, for the library's own callers (AsyncCheckpointer,
// import) and the tests: the Status forms of Save and Load, and planning once to save with the
// same plan later. Not installed.
#pragma once

#include <memory>
#include <string>

#include "distckpt/checkpoint.h"
#include "plan/plan.h"

namespace distckpt {

class CheckpointerAccess {
 public:
  static Status Save(Checkpointer& c, const StateTree& tree, int64_t step, std::string* dir) {
    return c.SaveStatus(tree, step, dir);
  }
  static Status Load(Checkpointer& c, const std::string& dir, StateTree& tree,
                     const LoadOptions& options = {}) {
    return c.LoadStatus(dir, tree, options);
  }
  static Status Plan(Checkpointer& c, const StateTree& tree,
                     std::shared_ptr<const SavePlan>* plan) {
    return c.SharedPlan(tree, plan);
  }
  static Status SavePlanned(Checkpointer& c, const StateTree& tree, const SavePlan& plan,
                            int64_t step, std::string* dir) {
    return c.SavePlanned(tree, plan, step, dir);
  }
};

}  // namespace distckpt
