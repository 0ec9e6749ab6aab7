// The library's version, recorded in every manifest.
#pragma once

namespace distckpt {

inline constexpr char kLibraryVersion[] = "0.1.0";

}  // namespace distckpt
