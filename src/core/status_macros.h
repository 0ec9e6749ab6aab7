// Early-return helpers for code that reports errors as values (Status, Result). Internal: the
// public headers define no macros of this kind, so users' own RETURN_IF_ERROR never collides.
#pragma once

#include <utility>

#include "distckpt/status.h"

#define DISTCKPT_CONCAT_INNER(a, b) a##b
#define DISTCKPT_CONCAT(a, b) DISTCKPT_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)            \
  do {                                   \
    ::distckpt::Status _status = (expr); \
    if (!_status.ok()) return _status;   \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(DISTCKPT_CONCAT(_result_, __LINE__), lhs, expr)
