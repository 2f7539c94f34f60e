// Shared definitions of the streaming top-k: the ranking rule and the insertion
// into one channel's k-deep state. Used by the CPU and CUDA kernels alike so the
// tie-break cannot drift between devices.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SKM_HD __host__ __device__ __forceinline__
#else
#define SKM_HD inline
#endif

namespace sketchmine {

// True when entry 1 ranks before entry 2: larger value first, then the smaller
// global image index. An empty slot (index < 0) ranks after every real entry.
SKM_HD bool ranks_before(float v1, int64_t i1, float v2, int64_t i2) {
  if (i2 < 0) return i1 >= 0;
  if (i1 < 0) return false;
  if (v1 != v2) return v1 > v2;
  return i1 < i2;
}

// Insert one candidate into a channel's state, kept sorted best-first.
// `values`, `index`, `position` point at the channel's k slots.
SKM_HD void insert_candidate(float* values, int64_t* index, int64_t* position,
                             int64_t k, float v, int64_t img, int64_t pos) {
  if (!ranks_before(v, img, values[k - 1], index[k - 1])) return;
  int64_t j = k - 1;
  while (j > 0 && ranks_before(v, img, values[j - 1], index[j - 1])) {
    values[j] = values[j - 1];
    index[j] = index[j - 1];
    position[j] = position[j - 1];
    --j;
  }
  values[j] = v;
  index[j] = img;
  position[j] = pos;
}

}  // namespace sketchmine
