// The first element of a float row equal to a value, four floats at a time (SSE, baseline
// x86-64): the top-k's position of each map's maximum (topk_update.cpp) and the bottom-k's
// (distribution.cpp). CPU only; the CUDA kernels scan a thread's row one float at a time.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>

#define SKETCHMINE_FIRST_EQUAL_SSE 1

namespace sketchmine {

// Index of the first element of row[0, len) equal to target (+0 equals -0), -1 when none is.
inline int64_t first_equal_sse(const float* row, int64_t len, float target) {
  const __m128 t = _mm_set1_ps(target);
  int64_t i = 0;
  for (; i + 4 <= len; i += 4) {
    const int hit = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(row + i), t));
    if (hit) return i + __builtin_ctz(hit);
  }
  for (; i < len; ++i) {
    if (row[i] == target) return i;
  }
  return -1;
}

}  // namespace sketchmine
#endif
