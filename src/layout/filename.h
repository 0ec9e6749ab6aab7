// Every name distckpt gives to a file or directory, and the parsers that recognise them.
//
// A checkpoint root holds committed checkpoints `step-<8 digits>/`, while a save runs
// `.tmp-step-<8 digits>-<nonce>/`, and `tags/<name>` files that each hold a checkpoint's
// directory name. Inside a checkpoint: `rank-<5 digits>.h5` per writing rank,
// `manifest.h5` (the index) and `manifest.xxh3` (the index file's checksum). Nothing else in the
// library spells these names. Plain functions of their arguments: thread-safe.
#pragma once

#include <cstdint>
#include <string>

namespace distckpt {

inline constexpr char kManifestName[] = "manifest.h5";
inline constexpr char kManifestSumName[] = "manifest.xxh3";
inline constexpr char kTagsDirName[] = "tags";
// The largest step a directory name can carry (8 digits).
inline constexpr int64_t kMaxStep = 99999999;

// "step-00000042"
std::string CheckpointDirName(int64_t step);
// ".tmp-step-00000042-<nonce>"
std::string TmpCheckpointDirName(int64_t step, const std::string& nonce);
// "rank-00003.h5"
std::string RankFileName(int rank);
// A name with ".tmp" appended: where a file is written before it is renamed into place.
std::string TmpFileName(const std::string& name);

// Whether `name` can name a tag: 1-100 of [A-Za-z0-9._-], not starting with '.' nor ending in
// ".tmp" (a tag being written).
bool IsValidTagName(const std::string& name);

enum class DirKind { kOther, kCommitted, kTemporary };
// What a directory entry under a checkpoint root is; sets *step for the two checkpoint kinds.
DirKind ParseCheckpointDirName(const std::string& name, int64_t* step);

// Inside a rank file, the 1-D dataset that holds the packed small shards of one dtype:
// "_distckpt/pack/float32". `dtype_name` as DtypeName() spells it.
std::string PackDatasetName(const std::string& dtype_name);

// "a/b" from "a" and "b"; `b` alone when `a` is empty.
std::string JoinPath(const std::string& a, const std::string& b);
// The last component of a path.
std::string BaseName(const std::string& path);
// Everything before the last component ("." for a bare name).
std::string DirName(const std::string& path);

}  // namespace distckpt
