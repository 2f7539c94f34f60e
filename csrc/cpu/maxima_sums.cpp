// CPU kernels of the per-batch sums over the image maxima: the unit moments (stats/moments.py)
// and the class sums (stats/classstats.py). Each adds, per cell, the batch's images in order
// (the same float64 roundings as the pure-torch paths they replace) in one pass, and splits
// across threads only when a task has enough work (grain.h).
#include <ATen/Parallel.h>

#include <atomic>

#include "../grain.h"
#include "../ops.h"

namespace sketchmine {
namespace {

void check_maxima2d(const char* op, const at::Tensor& m) {
  TORCH_CHECK(m.dim() == 2 && m.scalar_type() == at::kFloat && m.device().is_cpu(), op,
              ": maxima must be (N, C) float32 on the CPU, got ", m.sizes(), " ", m.scalar_type(), " ", m.device());
}

void check_vector(const char* op, const at::Tensor& t, at::ScalarType type, int64_t c) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == c && t.scalar_type() == type && t.is_contiguous() && t.device().is_cpu(),
              op, ": a state vector must be contiguous (", c, ",) ", type, " on the CPU, got ", t.sizes(), " ",
              t.scalar_type());
}

}  // namespace

void moments_update_cpu(const at::Tensor& maxima, at::Tensor& sum, at::Tensor& count, at::Tensor& firing) {
  check_maxima2d("moments_update", maxima);
  const int64_t n = maxima.size(0), c = maxima.size(1), s0 = maxima.stride(0), s1 = maxima.stride(1);
  check_vector("moments_update", sum, at::kDouble, c);
  check_vector("moments_update", count, at::kLong, c);
  check_vector("moments_update", firing, at::kLong, c);
  const float* m = maxima.const_data_ptr<float>();
  double* sum_p = sum.data_ptr<double>();
  int64_t *count_p = count.data_ptr<int64_t>(), *firing_p = firing.data_ptr<int64_t>();
  at::parallel_for(0, c, task_grain(n, 64), [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < n; ++i) {  // image-major: rows are read contiguously, adds stay in order
      const float* row = m + i * s0;
      for (int64_t u = begin; u < end; ++u) {
        const float v = row[u * s1];
        if (v != v) continue;  // NaN: an all-NaN map, left out (adding 0.0 instead gives the same sum)
        sum_p[u] += static_cast<double>(v);
        ++count_p[u];
        firing_p[u] += v > 0.0f;
      }
    }
  });
}

int64_t class_sums_update_cpu(const at::Tensor& maxima, const at::Tensor& rows, at::Tensor& sums) {
  check_maxima2d("class_sums_update", maxima);
  const int64_t n = maxima.size(0), c = maxima.size(1), s0 = maxima.stride(0), s1 = maxima.stride(1);
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) == n && rows.scalar_type() == at::kLong && rows.device().is_cpu(),
              "class_sums_update: rows must be (N,) = (", n, ",) int64 on the CPU, got ", rows.sizes(), " ",
              rows.scalar_type());
  TORCH_CHECK(sums.dim() == 2 && sums.size(1) == c && sums.scalar_type() == at::kDouble && sums.device().is_cpu() &&
                  (c <= 1 || sums.stride(1) == 1),
              "class_sums_update: sums must be (R, C) float64 on the CPU with C = ", c,
              " and unit stride along C, got ", sums.sizes(), " ", sums.scalar_type(), " strides ", sums.strides());
  const at::Tensor r = rows.contiguous();
  const int64_t* r_p = r.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(r_p[i] >= 0 && r_p[i] < sums.size(0), "class_sums_update: row ", r_p[i], " of image ", i,
                " is outside [0, ", sums.size(0), ")");
  }
  const float* m = maxima.const_data_ptr<float>();
  double* out = sums.data_ptr<double>();
  const int64_t rs = sums.stride(0);
  std::atomic<int64_t> nans{0};
  at::parallel_for(0, c, task_grain(n, 64), [&](int64_t begin, int64_t end) {
    int64_t mine = 0;
    for (int64_t i = 0; i < n; ++i) {  // images in order: each cell's adds in index_add_'s order
      const float* row = m + i * s0;
      double* target = out + r_p[i] * rs;
      for (int64_t u = begin; u < end; ++u) {
        const float v = row[u * s1];
        if (v != v) {
          ++mine;
        } else {
          target[u] += static_cast<double>(v);
        }
      }
    }
    nans += mine;
  });
  return nans.load();
}

}  // namespace sketchmine
