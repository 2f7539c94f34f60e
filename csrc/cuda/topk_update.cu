// CUDA kernel of topk_update: one warp reduces one (image, channel) row, then one
// thread per channel merges the batch's candidates in image order. Same ranking
// rule as the CPU kernel (topk_common.h), so results are identical across devices.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <limits>

#include "../ops.h"
#include "../topk_common.h"

namespace sketchmine {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_float<c10::Half>(c10::Half v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_float<c10::BFloat16>(c10::BFloat16 v) {
  return static_cast<float>(v);
}

template <typename T>
__global__ void reduce_rows(const T* __restrict__ data, int64_t n, int64_t c, int64_t len,
                            int64_t sn, int64_t sc, int64_t sl, float* __restrict__ cand_v,
                            int64_t* __restrict__ cand_p, int64_t* __restrict__ cand_nan) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n * c) return;
  const int64_t i = row / c, ch = row % c;
  const T* p = data + i * sn + ch * sc;
  float best = 0.f;
  int64_t pos = -1, nans = 0;
  for (int64_t j = lane; j < len; j += kWarp) {
    const float v = to_float(p[j * sl]);
    if (v != v) {
      ++nans;
    } else if (pos < 0 || v > best) {  // lanes visit j in increasing order: first max kept
      best = v;
      pos = j;
    }
  }
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const float ov = __shfl_down_sync(0xffffffffu, best, off);
    const int64_t op = __shfl_down_sync(0xffffffffu, pos, off);
    nans += __shfl_down_sync(0xffffffffu, nans, off);
    if (ranks_before(ov, op, best, pos)) {  // same rule, positions for image indices: first max wins
      best = ov;
      pos = op;
    }
  }
  if (lane == 0) {
    cand_v[row] = pos < 0 ? CUDART_NAN_F : best;  // all NaN: NaN maximum, never merged
    cand_p[row] = pos;
    cand_nan[row] = nans;
  }
}

// One warp per channel: lanes test 32 candidates at a time against the channel's
// current k-th entry; only those that beat it (few, once the state has warmed up) are
// inserted, one after another, by lane 0. insert_candidate re-checks each against the
// updated state, so the result equals inserting every candidate in turn.
__global__ void merge_channels(const float* __restrict__ cand_v, const int64_t* __restrict__ cand_p,
                               const int64_t* __restrict__ cand_nan,
                               const int64_t* __restrict__ img, int64_t n, int64_t c, int64_t k,
                               float* values, int64_t* index, int64_t* position,
                               int64_t* nan_count) {
  const int lane = threadIdx.x % kWarp;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (ch >= c) return;
  float* vals = values + ch * k;
  int64_t* idx = index + ch * k;
  int64_t* pos = position + ch * k;
  int64_t nans = 0;
  for (int64_t base = 0; base < n; base += kWarp) {
    const int64_t i = base + lane;
    float v = 0.f;
    int64_t p = -1, im = -1;
    if (i < n) {
      const int64_t r = i * c + ch;
      nans += cand_nan[r];
      p = cand_p[r];
      v = cand_v[r];
      im = img[i];
    }
    __syncwarp();
    const bool pass = p >= 0 && ranks_before(v, im, vals[k - 1], idx[k - 1]);
    unsigned mask = __ballot_sync(0xffffffffu, pass);
    while (mask) {
      const int src = __ffs(mask) - 1;
      mask &= mask - 1;
      const float sv = __shfl_sync(0xffffffffu, v, src);
      const int64_t sp = __shfl_sync(0xffffffffu, p, src);
      const int64_t si = __shfl_sync(0xffffffffu, im, src);
      if (lane == 0) insert_candidate(vals, idx, pos, k, sv, si, sp);
      __syncwarp();
    }
  }
  for (int off = kWarp / 2; off > 0; off /= 2) nans += __shfl_down_sync(0xffffffffu, nans, off);
  if (lane == 0) nan_count[ch] += nans;
}

}  // namespace

at::Tensor topk_update_cuda(const at::Tensor& acts, const at::Tensor& image_index,
                            at::Tensor& values, at::Tensor& index, at::Tensor& position,
                            at::Tensor& nan_count) {
  const at::Tensor acts3 =
      check_topk_args(acts, image_index, values, index, position, nan_count);
  const int64_t n = acts3.size(0), c = acts3.size(1), len = acts3.size(2);
  if (n == 0 || c == 0 || len == 0) {  // nothing to launch: a grid of 0 blocks is a launch error
    return at::full({n, c}, std::numeric_limits<float>::quiet_NaN(), acts.options().dtype(at::kFloat));
  }
  const c10::cuda::CUDAGuard guard(acts.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor img = image_index.contiguous();
  const auto opts = acts.options();
  at::Tensor cand_v = at::empty({n * c}, opts.dtype(at::kFloat));
  at::Tensor cand_p = at::empty({n * c}, opts.dtype(at::kLong));
  at::Tensor cand_nan = at::empty({n * c}, opts.dtype(at::kLong));
  const int64_t blocks = (n * c + kRowsPerBlock - 1) / kRowsPerBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, acts3.scalar_type(), "topk_update_cuda", [&] {
        reduce_rows<scalar_t><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(
            acts3.const_data_ptr<scalar_t>(), n, c, len, acts3.stride(0), acts3.stride(1),
            acts3.stride(2), cand_v.data_ptr<float>(), cand_p.data_ptr<int64_t>(),
            cand_nan.data_ptr<int64_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  merge_channels<<<(c + kRowsPerBlock - 1) / kRowsPerBlock, kRowsPerBlock * kWarp, 0, stream>>>(
      cand_v.data_ptr<float>(), cand_p.data_ptr<int64_t>(), cand_nan.data_ptr<int64_t>(),
      img.const_data_ptr<int64_t>(), n, c, values.size(1), values.data_ptr<float>(),
      index.data_ptr<int64_t>(), position.data_ptr<int64_t>(), nan_count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return cand_v.view({n, c});
}

}  // namespace sketchmine
