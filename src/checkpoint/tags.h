// The check of a tag's name, shared by Save(tag) and the tag functions of the catalog.
#pragma once

#include <string>

#include "distckpt/status.h"

namespace distckpt {

// kInvalidArgument naming the rule when `tag` cannot name a tag (layout/filename.h).
Status CheckTagName(const std::string& tag);

}  // namespace distckpt
