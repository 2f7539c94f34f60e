// CPU kernel of crop_patches: one task per (patch, channel) row block.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "../crop_common.h"
#include "../ops.h"

namespace sketchmine {

at::Tensor crop_patches_cpu(const at::Tensor& images, const at::Tensor& image_index,
                            const at::Tensor& corners, int64_t height, int64_t width, double fill) {
  check_crop_args(images, image_index, corners, height, width, fill);
  const at::Tensor img = images.contiguous();
  const at::Tensor idx = image_index.contiguous(), cor = corners.contiguous();
  const int64_t m = cor.size(0), c = img.size(1), h = img.size(2), w = img.size(3);
  at::Tensor out = at::empty({m, c, height, width}, img.options());
  if (m == 0) return out;
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  const int64_t* cp = cor.const_data_ptr<int64_t>();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "crop_patches_cpu", [&] {
    const scalar_t* src = img.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const scalar_t f = static_cast<scalar_t>(fill);  // representable: check_crop_args
    at::parallel_for(0, m * c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t p = r / c, ch = r % c;
        const scalar_t* plane = src + (ip[p] * c + ch) * h * w;
        scalar_t* o = dst + r * height * width;
        for (int64_t py = 0; py < height; ++py) {
          for (int64_t px = 0; px < width; ++px) {
            const int64_t s = crop_source(cp[2 * p], cp[2 * p + 1], py, px, h, w);
            o[py * width + px] = s < 0 ? f : plane[s];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace sketchmine
