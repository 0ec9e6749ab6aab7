// The catalog's cheap listing, shared by the catalog and the loads that fall back.
#pragma once

#include <string>
#include <vector>

#include "distckpt/checkpoint.h"

namespace distckpt {

// Every checkpoint directory under root (committed or not), oldest first, from the directory's
// names and whether each manifest is in place: no manifest is read, so `manifest`, `problem` and
// `tags` stay empty. The listing's error when root cannot be listed.
Result<std::vector<CheckpointInfo>> ListCheckpointDirs(const std::string& root, Env* env);
// ListCheckpoints with the listing's error, for callers that must tell a root that cannot be
// listed from an empty one (retention).
Result<std::vector<CheckpointInfo>> ListCheckpointsOrError(const std::string& root, Env* env);

}  // namespace distckpt
