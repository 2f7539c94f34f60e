// CUDA kernel of crop_patches: one thread per output pixel.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "../crop_common.h"
#include "../ops.h"

namespace sketchmine {
namespace {

template <typename T>
__global__ void crop_kernel(const T* __restrict__ src, const int64_t* __restrict__ idx,
                            const int64_t* __restrict__ cor, int64_t total, int64_t c, int64_t h,
                            int64_t w, int64_t height, int64_t width, T fill, T* __restrict__ dst) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t px = t % width, py = (t / width) % height, r = t / (width * height);
  const int64_t p = r / c, ch = r % c;
  const int64_t s = crop_source(cor[2 * p], cor[2 * p + 1], py, px, h, w);
  dst[t] = s < 0 ? fill : src[(idx[p] * c + ch) * h * w + s];
}

}  // namespace

at::Tensor crop_patches_cuda(const at::Tensor& images, const at::Tensor& image_index,
                             const at::Tensor& corners, int64_t height, int64_t width, double fill) {
  check_crop_args(images, image_index, corners, height, width, fill);
  const c10::cuda::CUDAGuard guard(images.device());
  const at::Tensor img = images.contiguous();
  const at::Tensor idx = image_index.contiguous(), cor = corners.contiguous();
  const int64_t m = cor.size(0), c = img.size(1), h = img.size(2), w = img.size(3);
  at::Tensor out = at::empty({m, c, height, width}, img.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int threads = 256;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "crop_patches_cuda", [&] {
    crop_kernel<scalar_t><<<(total + threads - 1) / threads, threads, 0, stream>>>(
        img.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), cor.const_data_ptr<int64_t>(),
        total, c, h, w, height, width, static_cast<scalar_t>(fill), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace sketchmine
