// CPU kernels of the unit-distribution statistics (python/sketchmine/stats/{histogram,sketch,
// examples,bottomk}.py): a parallel loop over units, each running its one-unit update from
// distribution_common.h (shared with the CUDA kernels) over the batch's (N, C) image maxima,
// in place on the packed state. Each equals its pure-torch reference bit for bit (the
// `add_reference` / `update_reference` of the Python class; tests/test_distribution_ops.py).
// Units are independent, so the parallel loop is deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../distribution_common.h"
#include "../grain.h"
#include "first_equal.h"
#include "../ops.h"

namespace sketchmine {

using namespace dist;

// Units per parallel task: each unit reads its N maxima, so a task holds at least kMinTaskWork
// entries (grain.h; a batch of 64 splits only layers wider than 4,096 units), and 64 units.
int64_t grain(const at::Tensor& maxima) { return task_grain(maxima.size(0), 64); }

Column column(const at::Tensor& x, int64_t c) {
  return {x.data_ptr<float>() + c * x.stride(1), x.size(0), x.stride(0)};
}

void check_maxima(const char* op, const at::Tensor& x, int64_t units) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, op, ": maxima must be (N, C) float32, got ",
              x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(x.size(1) == units, op, ": maxima have ", x.size(1), " units, the state ", units);
}

void check_state(const char* op, const at::Tensor& t, at::ScalarType type, at::IntArrayRef shape,
                 const at::Tensor& maxima) {
  TORCH_CHECK(t.scalar_type() == type && t.sizes() == shape && t.is_contiguous(), op,
              ": a state tensor must be contiguous ", type, " ", shape, ", got ", t.scalar_type(), " ", t.sizes());
  TORCH_CHECK(t.device() == maxima.device(), op, ": all tensors must be on ", maxima.device(), ", found one on ",
              t.device());
}

void check_histogram_args(const at::Tensor& maxima, const at::Tensor& lo, const at::Tensor& hi, const at::Tensor& e,
                          const at::Tensor& counts, const at::Tensor& inf) {
  const int64_t units = lo.size(0);
  check_maxima("histogram_update", maxima, units);
  check_state("histogram_update", lo, at::kDouble, {units}, maxima);
  check_state("histogram_update", hi, at::kDouble, {units}, maxima);
  check_state("histogram_update", e, at::kLong, {units}, maxima);
  check_state("histogram_update", counts, at::kLong, {units, kBins}, maxima);
  check_state("histogram_update", inf, at::kLong, {units, 2}, maxima);
}

void check_sketch_args(const at::Tensor& maxima, const at::Tensor& counts, const at::Tensor& top,
                       const at::Tensor& special) {
  const int64_t units = top.size(0);
  check_maxima("sketch_update", maxima, units);
  check_state("sketch_update", counts, at::kInt, {units, 2, kBuckets}, maxima);
  check_state("sketch_update", top, at::kLong, {units, 2}, maxima);
  check_state("sketch_update", special, at::kLong, {units, 3}, maxima);
}

void check_examples_args(const at::Tensor& maxima, const at::Tensor& image_index, const at::Tensor& lo,
                         const at::Tensor& hi, const at::Tensor& e, const at::Tensor& hashes,
                         const at::Tensor& index) {
  const int64_t units = lo.size(0);
  check_maxima("examples_update", maxima, units);
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == maxima.size(0) &&
                  image_index.scalar_type() == at::kLong && image_index.device() == maxima.device(),
              "examples_update: image_index must be (N,) int64 with N = ", maxima.size(0), " on ", maxima.device());
  TORCH_CHECK(hashes.dim() == 3 && hashes.size(2) >= 1, "examples_update: hashes must be (C, ", kSlots, ", m)");
  const int64_t m = hashes.size(2);
  check_state("examples_update", lo, at::kDouble, {units}, maxima);
  check_state("examples_update", hi, at::kDouble, {units}, maxima);
  check_state("examples_update", e, at::kLong, {units}, maxima);
  check_state("examples_update", hashes, at::kLong, {units, kSlots, m}, maxima);
  check_state("examples_update", index, at::kLong, {units, kSlots, m}, maxima);
  if (image_index.numel() > 0) {  // one reduction (a host sync on CUDA, like crop_patches' check)
    const auto lo_i = image_index.min().item<int64_t>(), hi_i = image_index.max().item<int64_t>();
    TORCH_CHECK(lo_i >= 0 && static_cast<uint64_t>(hi_i) <= kMask,
                "examples_update: image indices must lie in [0, 2^40) for the example hash, got [", lo_i, ", ",
                hi_i, "]");
  }
}

void check_bottomk_args(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                        const at::Tensor& values, const at::Tensor& index, const at::Tensor& position,
                        const at::Tensor& nan_count) {
  TORCH_CHECK(values.dim() == 2 && values.size(1) >= 1, "bottomk_update: values must be (C, k) with k >= 1, got ",
              values.sizes());
  const int64_t units = values.size(0), k = values.size(1), n = maxima.size(0);
  check_maxima("bottomk_update", maxima, units);
  TORCH_CHECK(acts.dim() == 3 && acts.size(0) == n && acts.size(1) == units && acts.size(2) >= 1 &&
                  acts.scalar_type() == at::kFloat && acts.is_contiguous() && acts.device() == maxima.device(),
              "bottomk_update: acts must be contiguous (N, C, L) float32 with (N, C) = (", n, ", ", units, "), got ",
              acts.sizes(), " ", acts.scalar_type());
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == n && image_index.scalar_type() == at::kLong &&
                  image_index.device() == maxima.device(),
              "bottomk_update: image_index must be (N,) int64 with N = ", n);
  check_state("bottomk_update", values, at::kFloat, {units, k}, maxima);
  check_state("bottomk_update", index, at::kLong, {units, k}, maxima);
  check_state("bottomk_update", position, at::kLong, {units, k}, maxima);
  check_state("bottomk_update", nan_count, at::kLong, {units}, maxima);
  check_image_ids("bottomk_update", image_index);
}

void histogram_update_cpu(const at::Tensor& maxima, at::Tensor& lo, at::Tensor& hi, at::Tensor& e,
                          at::Tensor& counts, at::Tensor& inf) {
  check_histogram_args(maxima, lo, hi, e, counts, inf);
  double *lo_p = lo.data_ptr<double>(), *hi_p = hi.data_ptr<double>();
  int64_t *e_p = e.data_ptr<int64_t>(), *counts_p = counts.data_ptr<int64_t>(), *inf_p = inf.data_ptr<int64_t>();
  at::parallel_for(0, lo.size(0), grain(maxima), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      histogram_unit(column(maxima, c), lo_p[c], hi_p[c], e_p[c], counts_p + c * kBins, inf_p + 2 * c);
    }
  });
}

void sketch_update_cpu(const at::Tensor& maxima, at::Tensor& counts, at::Tensor& top, at::Tensor& special) {
  check_sketch_args(maxima, counts, top, special);
  int32_t* counts_p = counts.data_ptr<int32_t>();
  int64_t *top_p = top.data_ptr<int64_t>(), *special_p = special.data_ptr<int64_t>();
  at::parallel_for(0, top.size(0), grain(maxima), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      sketch_unit(column(maxima, c), counts_p + c * 2 * kBuckets, top_p + 2 * c, special_p + 3 * c);
    }
  });
}

void examples_update_cpu(const at::Tensor& maxima, const at::Tensor& image_index, at::Tensor& lo, at::Tensor& hi,
                         at::Tensor& e, at::Tensor& hashes, at::Tensor& index) {
  check_examples_args(maxima, image_index, lo, hi, e, hashes, index);
  const at::Tensor ids = image_index.contiguous();
  const int64_t n = ids.size(0), m = hashes.size(2);
  const int64_t* ids_p = ids.data_ptr<int64_t>();
  std::vector<int64_t> h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = static_cast<int64_t>(image_hash(ids_p[i]));
  double *lo_p = lo.data_ptr<double>(), *hi_p = hi.data_ptr<double>();
  int64_t *e_p = e.data_ptr<int64_t>(), *hash_p = hashes.data_ptr<int64_t>(), *index_p = index.data_ptr<int64_t>();
  at::parallel_for(0, lo.size(0), grain(maxima), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch_h(kSlots * m), scratch_i(kSlots * m);
    for (int64_t c = begin; c < end; ++c) {
      examples_unit(column(maxima, c), h.data(), ids_p, m, lo_p[c], hi_p[c], e_p[c], hash_p + c * kSlots * m,
                    index_p + c * kSlots * m, scratch_h.data(), scratch_i.data());
    }
  });
}

#if defined(SKETCHMINE_FIRST_EQUAL_SSE)
// ScanFirstEqual four floats at a time: the bottom-k's candidates in a first batch are every image,
// and each scan of its map was scalar (VGG-19: a whole pass over the activations, one thread).
struct FirstEqual {
  int64_t operator()(const float* map, int64_t len, float v) const {
    const int64_t p = first_equal_sse(map, len, v);
    return p < 0 ? len - 1 : p;
  }
};
#else
using FirstEqual = ScanFirstEqual;
#endif

void bottomk_update_cpu(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                        at::Tensor& values, at::Tensor& index, at::Tensor& position, at::Tensor& nan_count) {
  check_bottomk_args(maxima, acts, image_index, values, index, position, nan_count);
  const int64_t units = values.size(0), k = values.size(1), len = acts.size(2);
  const at::Tensor ids = image_index.contiguous();
  const int64_t* ids_p = ids.data_ptr<int64_t>();
  const float* acts_p = acts.data_ptr<float>();
  float* values_p = values.data_ptr<float>();
  int64_t *index_p = index.data_ptr<int64_t>(), *pos_p = position.data_ptr<int64_t>();
  int64_t* nan_p = nan_count.data_ptr<int64_t>();
  at::parallel_for(0, units, grain(maxima), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      bottomk_unit(column(maxima, c), acts_p + c * len, units * len, len, ids_p, k, values_p + c * k,
                   index_p + c * k, pos_p + c * k, nan_p + c, FirstEqual{});
    }
  });
}

}  // namespace sketchmine
