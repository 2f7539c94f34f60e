// CPU kernel of the preprocessing's normalisation (python/sketchmine/data/preprocess.py:
// Preprocessing.normalise): out[n, k] = (x[n, k or 0] - mean[k]) / std[k], each channel's
// plane written once. torch's `(x - mean).div_(std)` writes the batch and then reads and
// writes it again (a 224-px batch of 64 is 38 MB, three channels repeated from one grey plane
// by a zero stride); here one pass reads the source plane and writes the output. Subtraction
// and division are IEEE-rounded as torch's, so the floats are the same
// (tests/test_normalise.py).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "../grain.h"
#include "../ops.h"

namespace sketchmine {

at::Tensor normalise_cpu(const at::Tensor& x, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                         int64_t channels) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "normalise: x must be (N, c, H, W) float32 on the CPU, got ", x.sizes(), " ", x.scalar_type());
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(c == channels || c == 1, "normalise: x has ", c, " channel(s); expected ", channels, " or 1");
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == channels && static_cast<int64_t>(std.size()) == channels,
              "normalise: ", mean.size(), " means and ", std.size(), " stds for ", channels, " channels");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty({n, channels, h, w}, x.options());
  // float32 numbers, as torch.tensor(mean, dtype=torch.float32) rounds them
  std::vector<float> m(channels), s(channels);
  for (int64_t k = 0; k < channels; ++k) {
    m[k] = static_cast<float>(mean[k]);
    s[k] = static_cast<float>(std[k]);
  }
  const float* src = xc.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t plane = h * w;
  at::parallel_for(0, n * channels, task_grain(plane, 1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t image = i / channels, k = i % channels;
      const float* a = src + (image * c + (c == 1 ? 0 : k)) * plane;
      float* b = dst + i * plane;
      const float mk = m[k], sk = s[k];
      for (int64_t p = 0; p < plane; ++p) b[p] = (a[p] - mk) / sk;
    }
  });
  return out;
}

}  // namespace sketchmine
