// CPU kernels of the unit-distribution statistics (python/sketchmine/stats/{grid,histogram,
// sketch,examples}.py): one pass per unit over a batch's (N, C) image maxima, in place on the
// packed state. Each equals, bit for bit, its pure-torch reference (the `add_reference` method
// of the Python class; tests/test_distribution_ops.py compares them with hypothesis). Units are
// independent, so the parallel loop over them is deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../ops.h"
#include "../topk_common.h"

namespace sketchmine {
namespace {

constexpr int64_t kBins = 64;      // grid.BINS
constexpr int64_t kEMin = -149;    // grid.E_MIN
constexpr int64_t kMantissa = 23;  // grid._MANTISSA
constexpr int64_t kBuckets = 512;  // sketch.BUCKETS
constexpr int kShift = 18;         // sketch.SHIFT
constexpr int64_t kScale = 4;      // examples.SCALE
constexpr int64_t kLevels = 17;    // examples.LEVELS
constexpr int64_t kSlots = kLevels + 2;
constexpr int kHashBits = 40;
constexpr uint64_t kMask = (uint64_t{1} << kHashBits) - 1;
constexpr int64_t kEmptyHash = int64_t{1} << kHashBits;
constexpr double kInf = std::numeric_limits<double>::infinity();

inline double pow2(int64_t e) {  // grid.pow2: 2^e exactly from the exponent bits
  const uint64_t bits = static_cast<uint64_t>(e + 1023) << 52;
  double out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

inline int64_t bin_of(double x, int64_t e) { return static_cast<int64_t>(std::floor(x * pow2(-e))); }

inline int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

int64_t exponent_floor(double lo, double hi) {  // grid.exponent_floor, finite lo/hi
  double big = std::max(std::fabs(lo), std::fabs(hi));
  if (!std::isfinite(big)) big = 0.0;
  int ex = 0;
  std::frexp(big, &ex);
  return std::max<int64_t>(big > 0 ? int64_t{ex} - 1 - kMantissa : kEMin, kEMin);
}

int64_t required_exponent(double lo, double hi, int64_t at_least) {  // grid.required_exponent
  if (!(std::isfinite(lo) && std::isfinite(hi))) return at_least;
  const double span = std::max(hi - lo, 0.0);
  int ex = 0;
  std::frexp(span, &ex);
  const int64_t guess = span > 0 ? int64_t{ex} - 8 : kEMin;
  int64_t e = std::max({at_least, exponent_floor(lo, hi), guess});
  for (int i = 0; i < 4; ++i) e += (bin_of(hi, e) - bin_of(lo, e) >= kBins);
  return e;
}

inline int64_t first_bin(double lo, int64_t e) { return std::isfinite(lo) ? bin_of(lo, e) : 0; }

// One unit's grid (lo, hi, e) widened by the finite range of its column; returns the old
// (first_bin, e) through the out-parameters, as AlignedGrid.advance does.
struct Column {
  const float* x;
  int64_t n, stride;
  float at(int64_t i) const { return x[i * stride]; }
};

void advance(const Column& col, double& lo, double& hi, int64_t& e, int64_t& old_first, int64_t& old_e) {
  double bmin = kInf, bmax = -kInf;
  for (int64_t i = 0; i < col.n; ++i) {
    const float v = col.at(i);
    if (std::isfinite(v)) {
      bmin = std::min(bmin, double{v});
      bmax = std::max(bmax, double{v});
    }
  }
  old_first = first_bin(lo, e);
  old_e = e;
  lo = std::min(lo, bmin);
  hi = std::max(hi, bmax);
  e = required_exponent(lo, hi, e);
}

// grid.slots for one unit: the new index of old bin b (blocks of `scale`), clamped to [0, b).
inline int64_t new_slot(int64_t b, int64_t old_first, int64_t old_e, int64_t first, int64_t e, int64_t bins,
                        int64_t scale) {
  const int64_t base_old = floor_div(old_first, scale), base_new = floor_div(first, scale);
  const int64_t shift = std::clamp<int64_t>(e - old_e, 0, 62);
  return std::clamp<int64_t>(((base_old + b) >> shift) - base_new, 0, bins - 1);
}

inline uint64_t image_hash(int64_t index) {  // examples.image_hash
  uint64_t x = (static_cast<uint64_t>(index) + 0x9E3779B97FULL) & kMask;
  x ^= x >> 20;
  x = (x * 0xBF58476D1DULL) & kMask;
  x ^= x >> 17;
  x = (x * 0x94D049BB13ULL) & kMask;
  return x ^ (x >> 20);
}

// Insert (h, idx) into a row of m ascending hashes when it beats the largest.
inline void insert_bottom(int64_t* hashes, int64_t* index, int64_t m, int64_t h, int64_t idx) {
  if (h >= hashes[m - 1]) return;
  int64_t j = m - 1;
  while (j > 0 && hashes[j - 1] > h) {
    hashes[j] = hashes[j - 1];
    index[j] = index[j - 1];
    --j;
  }
  hashes[j] = h;
  index[j] = idx;
}

Column column(const at::Tensor& x, int64_t c) {
  return {x.data_ptr<float>() + c * x.stride(1), x.size(0), x.stride(0)};
}

void check_maxima(const char* op, const at::Tensor& x, int64_t units) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(), op,
              ": maxima must be (N, C) float32 on the CPU, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(x.size(1) == units, op, ": maxima have ", x.size(1), " units, the state ", units);
}

void check_state(const char* op, const at::Tensor& t, at::ScalarType type, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == type && t.sizes() == shape && t.is_contiguous() && t.device().is_cpu(), op,
              ": a state tensor must be contiguous ", type, " ", shape, " on the CPU, got ", t.scalar_type(), " ",
              t.sizes());
}

}  // namespace

void histogram_update_cpu(const at::Tensor& maxima, at::Tensor& lo, at::Tensor& hi, at::Tensor& e,
                          at::Tensor& counts, at::Tensor& inf) {
  const int64_t units = lo.size(0);
  check_maxima("histogram_update", maxima, units);
  check_state("histogram_update", lo, at::kDouble, {units});
  check_state("histogram_update", hi, at::kDouble, {units});
  check_state("histogram_update", e, at::kLong, {units});
  check_state("histogram_update", counts, at::kLong, {units, kBins});
  check_state("histogram_update", inf, at::kLong, {units, 2});
  double *lo_p = lo.data_ptr<double>(), *hi_p = hi.data_ptr<double>();
  int64_t *e_p = e.data_ptr<int64_t>(), *counts_p = counts.data_ptr<int64_t>(), *inf_p = inf.data_ptr<int64_t>();
  at::parallel_for(0, units, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Column col = column(maxima, c);
      int64_t old_first = 0, old_e = 0;
      advance(col, lo_p[c], hi_p[c], e_p[c], old_first, old_e);
      const int64_t first = first_bin(lo_p[c], e_p[c]), ec = e_p[c];
      int64_t* row = counts_p + c * kBins;
      if (old_first != first || old_e != ec) {
        int64_t moved[kBins] = {0};
        for (int64_t b = 0; b < kBins; ++b) moved[new_slot(b, old_first, old_e, first, ec, kBins, 1)] += row[b];
        std::memcpy(row, moved, sizeof moved);
      }
      const double step = pow2(-ec);
      for (int64_t i = 0; i < col.n; ++i) {
        const float v = col.at(i);
        if (std::isfinite(v)) {
          const int64_t j = static_cast<int64_t>(std::floor(double{v} * step)) - first;
          ++row[std::clamp<int64_t>(j, 0, kBins - 1)];
        } else if (v == -std::numeric_limits<float>::infinity()) {
          ++inf_p[2 * c];
        } else if (v == std::numeric_limits<float>::infinity()) {
          ++inf_p[2 * c + 1];
        }
      }
    }
  });
}

void sketch_update_cpu(const at::Tensor& maxima, at::Tensor& counts, at::Tensor& top, at::Tensor& special) {
  const int64_t units = top.size(0);
  check_maxima("sketch_update", maxima, units);
  check_state("sketch_update", counts, at::kInt, {units, 2, kBuckets});
  check_state("sketch_update", top, at::kLong, {units, 2});
  check_state("sketch_update", special, at::kLong, {units, 3});
  int32_t* counts_p = counts.data_ptr<int32_t>();
  int64_t *top_p = top.data_ptr<int64_t>(), *special_p = special.data_ptr<int64_t>();
  at::parallel_for(0, units, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Column col = column(maxima, c);
      int64_t batch_top[2] = {-1, -1};
      for (int64_t i = 0; i < col.n; ++i) {
        const float v = col.at(i);
        if (std::isfinite(v) && v != 0.0f) {
          uint32_t bits;
          std::memcpy(&bits, &v, sizeof bits);
          const int64_t key = (bits & 0x7FFFFFFFu) >> kShift;
          int64_t& t = batch_top[v > 0.0f];
          t = std::max(t, key);
        }
      }
      for (int s = 0; s < 2; ++s) {
        int64_t& t = top_p[2 * c + s];
        const int64_t delta = std::clamp<int64_t>(std::max(t, batch_top[s]) - t, 0, kBuckets);
        if (delta > 0) {  // shifted(): slot b -> max(b - delta, 0)
          int32_t* row = counts_p + (2 * c + s) * kBuckets;
          int32_t low = 0;
          for (int64_t b = 0; b <= std::min(delta, kBuckets - 1); ++b) low += row[b];
          if (delta < kBuckets - 1) std::memmove(row + 1, row + delta + 1, sizeof(int32_t) * (kBuckets - 1 - delta));
          row[0] = low;
          std::fill(row + std::max<int64_t>(kBuckets - delta, 1), row + kBuckets, 0);
          t = std::max(t, batch_top[s]);
        }
      }
      for (int64_t i = 0; i < col.n; ++i) {
        const float v = col.at(i);
        if (v == -std::numeric_limits<float>::infinity()) {
          ++special_p[3 * c];
        } else if (v == 0.0f) {
          ++special_p[3 * c + 1];
        } else if (v == std::numeric_limits<float>::infinity()) {
          ++special_p[3 * c + 2];
        } else if (v == v) {
          uint32_t bits;
          std::memcpy(&bits, &v, sizeof bits);
          const int64_t key = (bits & 0x7FFFFFFFu) >> kShift;
          const int s = v > 0.0f;
          const int64_t slot = std::clamp<int64_t>(key - (top_p[2 * c + s] - (kBuckets - 1)), 0, kBuckets - 1);
          ++counts_p[(2 * c + s) * kBuckets + slot];
        }
      }
    }
  });
}

void examples_update_cpu(const at::Tensor& maxima, const at::Tensor& image_index, at::Tensor& lo, at::Tensor& hi,
                         at::Tensor& e, at::Tensor& hashes, at::Tensor& index) {
  const int64_t units = lo.size(0);
  check_maxima("examples_update", maxima, units);
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == maxima.size(0) &&
                  image_index.scalar_type() == at::kLong && image_index.device().is_cpu(),
              "examples_update: image_index must be (N,) int64 on the CPU with N = ", maxima.size(0));
  TORCH_CHECK(hashes.dim() == 3 && hashes.size(2) >= 1, "examples_update: hashes must be (C, ", kSlots, ", m)");
  const int64_t m = hashes.size(2);
  check_state("examples_update", lo, at::kDouble, {units});
  check_state("examples_update", hi, at::kDouble, {units});
  check_state("examples_update", e, at::kLong, {units});
  check_state("examples_update", hashes, at::kLong, {units, kSlots, m});
  check_state("examples_update", index, at::kLong, {units, kSlots, m});
  const at::Tensor ids = image_index.contiguous();
  const int64_t n = ids.size(0);
  const int64_t* ids_p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ids_p[i] >= 0 && static_cast<uint64_t>(ids_p[i]) <= kMask,
                "examples_update: image indices must lie in [0, 2^40) for the example hash, got ", ids_p[i]);
  }
  std::vector<int64_t> h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = static_cast<int64_t>(image_hash(ids_p[i]));
  double *lo_p = lo.data_ptr<double>(), *hi_p = hi.data_ptr<double>();
  int64_t *e_p = e.data_ptr<int64_t>(), *hash_p = hashes.data_ptr<int64_t>(), *index_p = index.data_ptr<int64_t>();
  at::parallel_for(0, units, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> old_h(kSlots * m), old_i(kSlots * m);
    for (int64_t c = begin; c < end; ++c) {
      const Column col = column(maxima, c);
      int64_t old_first = 0, old_e = 0;
      advance(col, lo_p[c], hi_p[c], e_p[c], old_first, old_e);
      const int64_t first = first_bin(lo_p[c], e_p[c]), ec = e_p[c];
      int64_t *hs = hash_p + c * kSlots * m, *is = index_p + c * kSlots * m;
      if (floor_div(old_first, kScale) != floor_div(first, kScale) || old_e != ec) {
        // move each bin's picks to its new bin, keeping the m smallest hashes of each
        std::copy(hs, hs + kSlots * m, old_h.begin());
        std::copy(is, is + kSlots * m, old_i.begin());
        std::fill(hs + m, hs + (kSlots - 1) * m, kEmptyHash);
        std::fill(is + m, is + (kSlots - 1) * m, int64_t{-1});
        for (int64_t b = 0; b < kLevels; ++b) {
          const int64_t to = 1 + new_slot(b, old_first, old_e, first, ec, kLevels, kScale);
          for (int64_t j = 0; j < m; ++j) {
            const int64_t at = (1 + b) * m + j;
            if (old_i[at] >= 0) insert_bottom(hs + to * m, is + to * m, m, old_h[at], old_i[at]);
          }
        }
      }
      const double step = pow2(-ec);
      const int64_t base = floor_div(first, kScale);
      for (int64_t i = 0; i < col.n; ++i) {
        const float v = col.at(i);
        if (v != v) continue;
        int64_t slot;
        if (std::isfinite(v)) {
          const int64_t coarse = floor_div(static_cast<int64_t>(std::floor(double{v} * step)), kScale);
          slot = std::clamp<int64_t>(coarse - base + 1, 1, kLevels);
        } else {
          slot = v > 0 ? kSlots - 1 : 0;
        }
        insert_bottom(hs + slot * m, is + slot * m, m, h[i], ids_p[i]);
      }
    }
  });
}

void bottomk_update_cpu(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                        at::Tensor& values, at::Tensor& index, at::Tensor& position, at::Tensor& nan_count) {
  const int64_t units = values.size(0), k = values.size(1);
  check_maxima("bottomk_update", maxima, units);
  const int64_t n = maxima.size(0);
  TORCH_CHECK(acts.dim() == 3 && acts.size(0) == n && acts.size(1) == units && acts.size(2) >= 1 &&
                  acts.scalar_type() == at::kFloat && acts.is_contiguous() && acts.device().is_cpu(),
              "bottomk_update: acts must be contiguous (N, C, L) float32 on the CPU with (N, C) = (", n, ", ", units,
              "), got ", acts.sizes(), " ", acts.scalar_type());
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == n && image_index.scalar_type() == at::kLong,
              "bottomk_update: image_index must be (N,) int64 with N = ", n);
  check_state("bottomk_update", values, at::kFloat, {units, k});
  check_state("bottomk_update", index, at::kLong, {units, k});
  check_state("bottomk_update", position, at::kLong, {units, k});
  check_state("bottomk_update", nan_count, at::kLong, {units});
  const at::Tensor ids = image_index.contiguous();
  const int64_t* ids_p = ids.data_ptr<int64_t>();
  const float* acts_p = acts.data_ptr<float>();
  const int64_t len = acts.size(2);
  float* values_p = values.data_ptr<float>();
  int64_t *index_p = index.data_ptr<int64_t>(), *pos_p = position.data_ptr<int64_t>();
  int64_t* nan_p = nan_count.data_ptr<int64_t>();
  at::parallel_for(0, units, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Column col = column(maxima, c);
      float* vs = values_p + c * k;
      int64_t *is = index_p + c * k, *ps = pos_p + c * k;
      for (int64_t i = 0; i < n; ++i) {
        const float v = col.at(i);
        if (v != v) {
          ++nan_p[c];
          continue;
        }
        if (!ranks_before(-v, ids_p[i], vs[k - 1], is[k - 1])) continue;
        const float* map = acts_p + (i * units + c) * len;  // the first position holding the maximum
        int64_t p = 0;
        while (p < len - 1 && map[p] != v) ++p;
        insert_candidate(vs, is, ps, k, -v, ids_p[i], p);
      }
    }
  });
}

}  // namespace sketchmine
