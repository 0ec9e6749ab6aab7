// The catalog's cheap listing, shared by the catalog and the loads that fall back.
#pragma once

#include <string>
#include <vector>

#include "distckpt/checkpoint.h"

namespace distckpt {

// Every checkpoint directory under root (committed or not), oldest first, from the directory's
// names and whether each manifest is in place: no manifest is read, so `manifest`, `problem` and
// `tags` stay empty. Empty when root cannot be listed.
std::vector<CheckpointInfo> ListCheckpointDirs(const std::string& root, Env* env);

}  // namespace distckpt
