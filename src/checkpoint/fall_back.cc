// Loading that falls back: the checkpoint asked for (or the latest) and, when it is damaged and
// the caller allows it, every older committed checkpoint in turn.
#include <cstdio>

#include "checkpoint/catalog.h"
#include "distckpt/checkpoint.h"
#include "layout/filename.h"

namespace distckpt {

std::vector<std::string> Checkpointer::CommittedNewestFirst(const std::string& root) {
  std::string joined;
  if (comm_.rank() == 0) {
    auto all = ListCheckpointDirs(root, env_);
    if (all.ok()) {
      for (auto it = all->rbegin(); it != all->rend(); ++it) {
        if (it->committed) joined += it->dir + '\n';
      }
    }
  }
  ThrowIfError(comm_.Broadcast(&joined, 0));
  std::vector<std::string> dirs;
  size_t start = 0;
  while (start < joined.size()) {
    size_t end = joined.find('\n', start);
    dirs.push_back(joined.substr(start, end - start));
    start = end + 1;
  }
  return dirs;
}

namespace {

std::string TrimSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

// `dir` and, when falling back, every committed checkpoint older than it under its root.
std::vector<std::string> Candidates(const std::string& dir, const std::vector<std::string>& all) {
  std::vector<std::string> out{dir};
  int64_t step = -1;
  const std::string name = BaseName(TrimSlashes(dir));
  if (ParseCheckpointDirName(name, &step) != DirKind::kCommitted) return out;
  for (const std::string& other : all) {
    int64_t other_step = -1;
    ParseCheckpointDirName(BaseName(other), &other_step);
    if (other_step < step) out.push_back(other);
  }
  return out;
}

bool IsDamage(const Error& e) {
  const Code code = e.status().code();
  return code == Code::kCorrupt || code == Code::kNotFound || code == Code::kIoError;
}

}  // namespace

std::string Checkpointer::LoadFallingBack(const std::string& dir, const LoadOptions& options,
                                          const std::function<void(const std::string&)>& load) {
  std::vector<std::string> candidates;
  if (dir.empty()) {
    if (root_.empty()) throw Error(InvalidArgument("no checkpoint named and no root to look in"));
    std::optional<std::string> latest = Latest();
    if (!latest) throw Error(NotFound("no committed checkpoint under '" + root_ + "'"));
    candidates = {*latest};
    if (options.fall_back) {
      for (const std::string& d : CommittedNewestFirst(root_)) {
        if (d != *latest) candidates.push_back(d);
      }
    }
  } else if (options.fall_back) {
    candidates = Candidates(dir, CommittedNewestFirst(DirName(TrimSlashes(dir))));
  } else {
    candidates = {dir};
  }
  for (size_t i = 0; i < candidates.size(); ++i) {
    try {
      load(candidates[i]);
      return candidates[i];
    } catch (const Error& e) {
      if (!options.fall_back || !IsDamage(e) || i + 1 == candidates.size()) throw;
      const std::string why =
          "checkpoint " + candidates[i] + " is damaged (" + e.what() + "); falling back";
      if (options.on_fall_back) {
        options.on_fall_back(why);
      } else if (comm_.rank() == 0) {
        std::fprintf(stderr, "distckpt: %s\n", why.c_str());
      }
    }
  }
  throw Error(Internal("no candidate to load"));  // not reached: the last one rethrows
}

}  // namespace distckpt
