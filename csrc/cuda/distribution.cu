// CUDA kernels of the unit-distribution statistics: a thread per unit, each running the same
// one-unit update as the CPU kernels (distribution_common.h), so both devices give the same
// bits. Units are independent: no atomics, deterministic. (Compiled in CI; not yet run on a GPU.)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "../distribution_common.h"
#include "../ops.h"

namespace sketchmine {
namespace {

using namespace dist;

constexpr int kThreads = 128;

inline int blocks(int64_t units) { return static_cast<int>((units + kThreads - 1) / kThreads); }

__global__ void histogram_kernel(const float* __restrict__ x, int64_t n, int64_t s0, int64_t s1, int64_t units,
                                 double* lo, double* hi, int64_t* e, int64_t* counts, int64_t* inf) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= units) return;
  histogram_unit(Column{x + c * s1, n, s0}, lo[c], hi[c], e[c], counts + c * kBins, inf + 2 * c);
}

__global__ void sketch_kernel(const float* __restrict__ x, int64_t n, int64_t s0, int64_t s1, int64_t units,
                              int32_t* counts, int64_t* top, int64_t* special) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= units) return;
  sketch_unit(Column{x + c * s1, n, s0}, counts + c * 2 * kBuckets, top + 2 * c, special + 3 * c);
}

__global__ void hash_kernel(const int64_t* __restrict__ ids, int64_t n, int64_t* h) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) h[i] = static_cast<int64_t>(image_hash(ids[i]));
}

__global__ void examples_kernel(const float* __restrict__ x, int64_t n, int64_t s0, int64_t s1, int64_t units,
                                const int64_t* __restrict__ h, const int64_t* __restrict__ ids, int64_t m,
                                double* lo, double* hi, int64_t* e, int64_t* hashes, int64_t* index,
                                int64_t* scratch_h, int64_t* scratch_i) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= units) return;
  const int64_t row = c * kSlots * m;
  examples_unit(Column{x + c * s1, n, s0}, h, ids, m, lo[c], hi[c], e[c], hashes + row, index + row,
                scratch_h + row, scratch_i + row);
}

__global__ void bottomk_kernel(const float* __restrict__ x, int64_t n, int64_t s0, int64_t s1, int64_t units,
                               const float* __restrict__ acts, int64_t len, const int64_t* __restrict__ ids,
                               int64_t k, float* values, int64_t* index, int64_t* position, int64_t* nan_count) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= units) return;
  bottomk_unit(Column{x + c * s1, n, s0}, acts + c * len, units * len, len, ids, k, values + c * k,
               index + c * k, position + c * k, nan_count + c, ScanFirstEqual{});
}

}  // namespace

void histogram_update_cuda(const at::Tensor& maxima, at::Tensor& lo, at::Tensor& hi, at::Tensor& e,
                           at::Tensor& counts, at::Tensor& inf) {
  check_histogram_args(maxima, lo, hi, e, counts, inf);
  const c10::cuda::CUDAGuard guard(maxima.device());
  const int64_t units = lo.size(0);
  if (units == 0) return;
  histogram_kernel<<<blocks(units), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      maxima.data_ptr<float>(), maxima.size(0), maxima.stride(0), maxima.stride(1), units, lo.data_ptr<double>(),
      hi.data_ptr<double>(), e.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), inf.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void sketch_update_cuda(const at::Tensor& maxima, at::Tensor& counts, at::Tensor& top, at::Tensor& special) {
  check_sketch_args(maxima, counts, top, special);
  const c10::cuda::CUDAGuard guard(maxima.device());
  const int64_t units = top.size(0);
  if (units == 0) return;
  sketch_kernel<<<blocks(units), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      maxima.data_ptr<float>(), maxima.size(0), maxima.stride(0), maxima.stride(1), units,
      counts.data_ptr<int32_t>(), top.data_ptr<int64_t>(), special.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void examples_update_cuda(const at::Tensor& maxima, const at::Tensor& image_index, at::Tensor& lo, at::Tensor& hi,
                          at::Tensor& e, at::Tensor& hashes, at::Tensor& index) {
  check_examples_args(maxima, image_index, lo, hi, e, hashes, index);
  const c10::cuda::CUDAGuard guard(maxima.device());
  const int64_t units = lo.size(0), n = maxima.size(0), m = hashes.size(2);
  if (units == 0 || n == 0) return;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor ids = image_index.contiguous();
  at::Tensor h = at::empty({n}, ids.options());
  hash_kernel<<<blocks(n), kThreads, 0, stream>>>(ids.data_ptr<int64_t>(), n, h.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor scratch_h = at::empty_like(hashes), scratch_i = at::empty_like(index);
  examples_kernel<<<blocks(units), kThreads, 0, stream>>>(
      maxima.data_ptr<float>(), n, maxima.stride(0), maxima.stride(1), units, h.data_ptr<int64_t>(),
      ids.data_ptr<int64_t>(), m, lo.data_ptr<double>(), hi.data_ptr<double>(), e.data_ptr<int64_t>(),
      hashes.data_ptr<int64_t>(), index.data_ptr<int64_t>(), scratch_h.data_ptr<int64_t>(),
      scratch_i.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bottomk_update_cuda(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                         at::Tensor& values, at::Tensor& index, at::Tensor& position, at::Tensor& nan_count) {
  check_bottomk_args(maxima, acts, image_index, values, index, position, nan_count);
  const c10::cuda::CUDAGuard guard(maxima.device());
  const int64_t units = values.size(0);
  if (units == 0 || maxima.size(0) == 0) return;
  const at::Tensor ids = image_index.contiguous();
  bottomk_kernel<<<blocks(units), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      maxima.data_ptr<float>(), maxima.size(0), maxima.stride(0), maxima.stride(1), units, acts.data_ptr<float>(),
      acts.size(2), ids.data_ptr<int64_t>(), values.size(1), values.data_ptr<float>(), index.data_ptr<int64_t>(),
      position.data_ptr<int64_t>(), nan_count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace sketchmine
