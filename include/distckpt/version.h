// The library's version, recorded in every manifest.
#pragma once

namespace distckpt {

inline constexpr char kLibraryVersion[] = "0.2.0";

}  // namespace distckpt
