// manifest.h5 as bytes: the HDF5 container of the manifest, built and parsed in memory.
//
// The file holds the index (the manifest's JSON, dataset /_distckpt/index) with its xxh3 as a
// root attribute, headline attributes (format, step, world size, epoch, loss) for h5py and
// h5dump, and one virtual dataset per tensor that stitches its shards from the rank files.
// Built with HDF5's in-memory driver, so the caller writes the bytes through its Env. Not
// thread-safe (HDF5).
#pragma once

#include <string>

#include "distckpt/manifest.h"

namespace distckpt {

// The name HDF5 gives the in-memory file; it never reaches the disk.
inline constexpr char kManifestImageName[] = "distckpt-manifest-image.h5";

// The bytes of manifest.h5 for `manifest`.
Result<std::string> EncodeManifestFile(const Manifest& manifest);
// Parses the bytes of a manifest.h5; `path` names the file in errors. Checks the index's own
// checksum and validates the manifest.
Result<Manifest> DecodeManifestFile(const std::string& bytes, const std::string& path);

}  // namespace distckpt
