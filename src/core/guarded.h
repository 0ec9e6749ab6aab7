// Turning exceptions from LibTorch and the standard library into Status at a layer boundary.
#pragma once

#include <c10/util/Exception.h>

#include <chrono>
#include <exception>
#include <string>

#include "distckpt/status.h"

namespace distckpt {

// Runs `fn` (returning Status); a thrown distckpt::Error, c10::Error or std::exception becomes
// a Status that names `what`.
template <typename Fn>
Status Guarded(const std::string& what, Fn&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    return e.status();
  } catch (const c10::Error& e) {
    return Internal(what + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(what + ": " + e.what());
  }
}

// Seconds on a monotonic clock, for deadlines.
inline double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace distckpt
