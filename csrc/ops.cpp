// The op schemas, declared once; each device registers its kernel below.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "ops.h"

#include <ATen/Dispatch.h>
#include <c10/util/TypeCast.h>
#include "cpu/block_cache.h"

namespace sketchmine {

at::Tensor check_topk_args(const at::Tensor& acts, const at::Tensor& image_index,
                           const at::Tensor& values, const at::Tensor& index,
                           const at::Tensor& position, const at::Tensor& nan_count) {
  TORCH_CHECK(acts.dim() >= 2,
              "topk_update: activations must be (N, C) or (N, C, *spatial), got shape ",
              acts.sizes());
  const auto st = acts.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "topk_update: activations must be float32, float16 or bfloat16, got ", st);
  const int64_t n = acts.size(0), c = acts.size(1);
  TORCH_CHECK(values.dim() == 2 && values.size(0) == c && values.size(1) >= 1,
              "topk_update: values must be (C, k) with C = ", c, ", got ", values.sizes());
  const int64_t k = values.size(1);
  TORCH_CHECK(values.scalar_type() == at::kFloat, "topk_update: values must be float32, got ",
              values.scalar_type());
  TORCH_CHECK(index.scalar_type() == at::kLong && position.scalar_type() == at::kLong &&
                  nan_count.scalar_type() == at::kLong && image_index.scalar_type() == at::kLong,
              "topk_update: index, position, nan_count and image_index must be int64");
  TORCH_CHECK(index.sizes() == values.sizes() && position.sizes() == values.sizes(),
              "topk_update: index and position must be (C, k) = (", c, ", ", k, "), got ",
              index.sizes(), " and ", position.sizes());
  TORCH_CHECK(nan_count.dim() == 1 && nan_count.size(0) == c,
              "topk_update: nan_count must be (C,) = (", c, ",), got ", nan_count.sizes());
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == n,
              "topk_update: image_index must be (N,) = (", n, ",), got ", image_index.sizes());
  TORCH_CHECK(values.is_contiguous() && index.is_contiguous() && position.is_contiguous() &&
                  nan_count.is_contiguous(),
              "topk_update: the state tensors must be contiguous");
  for (const at::Tensor* t : {&image_index, &values, &index, &position, &nan_count}) {
    TORCH_CHECK(t->device() == acts.device(), "topk_update: all tensors must be on ",
                acts.device(), ", found one on ", t->device());
  }
  check_image_ids("topk_update", image_index);
  int64_t len = 1;
  for (int64_t d = 2; d < acts.dim(); ++d) len *= acts.size(d);
  return acts.reshape({n, c, len});
}

void check_image_ids(const char* op, const at::Tensor& image_index) {
  // a negative id is an empty slot's mark: an image given one would be dropped without a word
  if (image_index.numel() > 0 && image_index.device().is_cpu()) {
    const auto lo = image_index.min().item<int64_t>();
    TORCH_CHECK(lo >= 0, op, ": image_index must be global image indices >= 0, found ", lo);
  }
}

void check_crop_args(const at::Tensor& images, const at::Tensor& image_index, const at::Tensor& corners,
                     int64_t height, int64_t width, double fill) {
  TORCH_CHECK(images.dim() == 4, "crop_patches: images must be (B, C, H, W), got shape ", images.sizes());
  TORCH_CHECK(corners.dim() == 2 && corners.size(1) == 2 && corners.scalar_type() == at::kLong,
              "crop_patches: corners must be (M, 2) int64 (top, left), got ", corners.sizes(), " ",
              corners.scalar_type());
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == corners.size(0) &&
                  image_index.scalar_type() == at::kLong,
              "crop_patches: image_index must be (M,) int64 with M = ", corners.size(0));
  TORCH_CHECK(height > 0 && width > 0, "crop_patches: patch size must be positive, got ", height, "x",
              width);
  TORCH_CHECK(image_index.device() == images.device() && corners.device() == images.device(),
              "crop_patches: all tensors must be on ", images.device());
  // on every device (a host sync on CUDA): the CUDA kernel would read outside the images
  if (image_index.numel() > 0) {
    const auto lo = image_index.min().item<int64_t>(), hi = image_index.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < images.size(0), "crop_patches: image_index must lie in [0, ",
                images.size(0), "), found [", lo, ", ", hi, "]");
  }
  // torch's own overflow check (as torch.full): a fill the dtype cannot hold (a negative or NaN
  // fill of uint8 images) is refused instead of converted with undefined behaviour
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "crop_patches", [&] {
    (void)c10::checked_convert<scalar_t, double>(fill, c10::toString(images.scalar_type()));
  });
}

}  // namespace sketchmine

TORCH_LIBRARY(sketchmine, m) {
  // Fixed-size patches at (top, left) corners of a batch of images; pixels outside the
  // image take `fill` (the receptive field overhangs the border).
  m.def("crop_patches(Tensor images, Tensor image_index, Tensor corners, int height, int width, "
        "float fill=0.) -> Tensor");
  // Streaming per-channel top-k: per (image, channel) the spatial max and its first
  // position, merged in place into a k-deep state sorted best-first. Returns those
  // (N, C) maxima (float32, NaN for an all-NaN map), so callers that also need them
  // (the per-class statistics) do not read the activations a second time.
  m.def(
      "topk_update(Tensor acts, Tensor image_index, Tensor(a!) values, Tensor(b!) index, "
      "Tensor(c!) position, Tensor(d!) nan_count) -> Tensor");
  // The unit-distribution statistics over a batch's (N, C) image maxima, in place (CPU; CUDA
  // compiled but not yet run on a GPU; elsewhere the Python classes run their pure-torch reference).
  m.def("histogram_update(Tensor maxima, Tensor(a!) lo, Tensor(b!) hi, Tensor(c!) e, Tensor(d!) counts, "
        "Tensor(e!) inf) -> ()");
  m.def("sketch_update(Tensor maxima, Tensor(a!) counts, Tensor(b!) top, Tensor(c!) special) -> ()");
  m.def("examples_update(Tensor maxima, Tensor image_index, Tensor(a!) lo, Tensor(b!) hi, Tensor(c!) e, "
        "Tensor(d!) hashes, Tensor(e!) index) -> ()");
  m.def("bottomk_update(Tensor maxima, Tensor acts, Tensor image_index, Tensor(a!) values, Tensor(b!) index, "
        "Tensor(c!) position, Tensor(d!) nan_count) -> ()");
  // Per-batch sums over the (N, C) image maxima, in place, images in order (CPU only).
  m.def("moments_update(Tensor maxima, Tensor(a!) sum, Tensor(b!) count, Tensor(c!) firing) -> ()");
  m.def("class_sums_update(Tensor maxima, Tensor rows, Tensor(a!) sums) -> int");
  // Per image of a normalised (N, ch, H, W) batch, the share of ink pixels (CPU only).
  m.def("ink_density(Tensor x, float[] scale, float? offset, float threshold) -> Tensor");
  // (x - mean) / std per channel of an (N, c, H, W) batch, c = channels or 1 (CPU only).
  m.def("normalise(Tensor x, float[] mean, float[] std, int channels) -> Tensor");
}

TORCH_LIBRARY_IMPL(sketchmine, CPU, m) {
  m.impl("topk_update", &sketchmine::topk_update_cpu);
  m.impl("crop_patches", &sketchmine::crop_patches_cpu);
  m.impl("histogram_update", &sketchmine::histogram_update_cpu);
  m.impl("sketch_update", &sketchmine::sketch_update_cpu);
  m.impl("examples_update", &sketchmine::examples_update_cpu);
  m.impl("bottomk_update", &sketchmine::bottomk_update_cpu);
  m.impl("moments_update", &sketchmine::moments_update_cpu);
  m.impl("class_sums_update", &sketchmine::class_sums_update_cpu);
  m.impl("ink_density", &sketchmine::ink_density_cpu);
  m.impl("normalise", &sketchmine::normalise_cpu);
}

#ifdef SKETCHMINE_WITH_CUDA
TORCH_LIBRARY_IMPL(sketchmine, CUDA, m) {
  m.impl("topk_update", &sketchmine::topk_update_cuda);
  m.impl("crop_patches", &sketchmine::crop_patches_cuda);
  m.impl("histogram_update", &sketchmine::histogram_update_cuda);
  m.impl("sketch_update", &sketchmine::sketch_update_cuda);
  m.impl("examples_update", &sketchmine::examples_update_cuda);
  m.impl("bottomk_update", &sketchmine::bottomk_update_cuda);
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "sketchmine compiled core: registers the torch.ops.sketchmine ops";
  m.def("block_cache_enter", &sketchmine::block_cache_enter,
        "Install the CPU block cache as torch's CPU allocator; False when it cannot.");
  m.def("block_cache_exit", [] {
    const auto c = sketchmine::block_cache_exit();
    return pybind11::make_tuple(c.reused, c.fresh, c.evicted, c.idle_bytes);
  }, "Stop keeping blocks and unmap the kept ones; (reused, fresh, evicted, idle bytes) since enter.");
#ifdef SKETCHMINE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
