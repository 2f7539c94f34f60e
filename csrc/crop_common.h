// Shared index arithmetic of crop_patches, so the CPU and CUDA kernels agree exactly.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SKM_CROP_HD __host__ __device__ __forceinline__
#else
#define SKM_CROP_HD inline
#endif

namespace sketchmine {

// Source pixel of patch pixel (py, px) for a box whose top-left corner is (top, left);
// -1 when it falls outside the (h, w) image (the patch gets the fill value there).
SKM_CROP_HD int64_t crop_source(int64_t top, int64_t left, int64_t py, int64_t px, int64_t h,
                                int64_t w) {
  const int64_t y = top + py, x = left + px;
  return (y < 0 || y >= h || x < 0 || x >= w) ? -1 : y * w + x;
}

}  // namespace sketchmine
