// Declarations shared by the op registration and the per-device kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace sketchmine {

// Checks every argument of topk_update (shapes, dtypes, devices) and returns the
// activations viewed as (N, C, L).
at::Tensor check_topk_args(const at::Tensor& acts, const at::Tensor& image_index,
                           const at::Tensor& values, const at::Tensor& index,
                           const at::Tensor& position, const at::Tensor& nan_count);

void topk_update_cpu(const at::Tensor& acts, const at::Tensor& image_index,
                     at::Tensor& values, at::Tensor& index, at::Tensor& position,
                     at::Tensor& nan_count);

#ifdef SKETCHMINE_WITH_CUDA
void topk_update_cuda(const at::Tensor& acts, const at::Tensor& image_index,
                      at::Tensor& values, at::Tensor& index, at::Tensor& position,
                      at::Tensor& nan_count);
#endif

}  // namespace sketchmine
