// One unit's update of each distribution statistic (python/sketchmine/stats/{grid,histogram,
// sketch,examples,bottomk}.py), shared by the CPU kernels (a parallel loop over units) and the
// CUDA kernels (a thread per unit), so the arithmetic cannot drift between devices. Every
// function equals its pure-torch reference bit for bit: floor(x * 2^-e) in float64 with 2^-e
// built from the exponent bits, the sketch key read off the float32 bits, the example hash in
// 64-bit unsigned arithmetic modulo 2^40.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "topk_common.h"

namespace sketchmine {
namespace dist {

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

SKM_HD int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
SKM_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
SKM_HD int64_t iclamp(int64_t v, int64_t lo, int64_t hi) { return imin(imax(v, lo), hi); }
SKM_HD bool finite(double v) { return v - v == 0.0; }  // false for NaN and ±inf
SKM_HD bool is_nan(float v) { return v != v; }
SKM_HD float pos_inf() {
  const uint32_t bits = 0x7F800000u;
  float out;
  memcpy(&out, &bits, sizeof out);
  return out;
}
// std::min / std::max's rule ((b < a) ? b : a): the same zero as the reference keeps
SKM_HD double dmin(double a, double b) { return b < a ? b : a; }
SKM_HD double dmax(double a, double b) { return a < b ? b : a; }

SKM_HD double pow2(int64_t e) {  // grid.pow2: 2^e exactly from the exponent bits
  const uint64_t bits = static_cast<uint64_t>(e + 1023) << 52;
  double out;
  memcpy(&out, &bits, sizeof out);
  return out;
}

// floor(v) as an integer without a libm call (baseline x86-64 has no floor instruction, and a call
// per value was most of the histogram's and examples' time): exact for |v| < 2^63, and every bin
// index here is below 2^26 in magnitude (the grid's exponent is at least exponent_floor's).
SKM_HD int64_t floor_int(double v) {
  const int64_t t = static_cast<int64_t>(v);  // toward zero
  return t - (static_cast<double>(t) > v);
}

SKM_HD int64_t bin_of(double x, int64_t e) { return floor_int(x * pow2(-e)); }

SKM_HD int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

SKM_HD int64_t exponent_floor(double lo, double hi) {  // grid.exponent_floor
  double big = dmax(fabs(lo), fabs(hi));
  if (!finite(big)) big = 0.0;
  int ex = 0;
  frexp(big, &ex);
  return imax(big > 0 ? int64_t{ex} - 1 - kMantissa : kEMin, kEMin);
}

SKM_HD int64_t required_exponent(double lo, double hi, int64_t at_least) {  // grid.required_exponent
  if (!(finite(lo) && finite(hi))) return at_least;
  const double span = dmax(hi - lo, 0.0);
  int ex = 0;
  frexp(span, &ex);
  const int64_t guess = span > 0 ? int64_t{ex} - 8 : kEMin;
  int64_t e = imax(imax(at_least, exponent_floor(lo, hi)), guess);
  for (int i = 0; i < 4; ++i) e += (bin_of(hi, e) - bin_of(lo, e) >= kBins);
  return e;
}

SKM_HD int64_t first_bin(double lo, int64_t e) { return finite(lo) ? bin_of(lo, e) : 0; }

// One unit's column of the batch's (N, C) maxima: element i at x[i * stride].
struct Column {
  const float* x;
  int64_t n, stride;
  SKM_HD float at(int64_t i) const { return x[i * stride]; }
};

// AlignedGrid.advance for one unit: widen (lo, hi, e) by the column's finite range; the old
// (first_bin, e) come back through the out-parameters, for rebinning.
SKM_HD void advance(const Column& col, double& lo, double& hi, int64_t& e, int64_t& old_first, int64_t& old_e) {
  double bmin = static_cast<double>(pos_inf()), bmax = -static_cast<double>(pos_inf());
  for (int64_t i = 0; i < col.n; ++i) {
    const double v = col.at(i);
    if (finite(v)) {
      bmin = dmin(bmin, v);
      bmax = dmax(bmax, v);
    }
  }
  old_first = first_bin(lo, e);
  old_e = e;
  lo = dmin(lo, bmin);
  hi = dmax(hi, bmax);
  e = required_exponent(lo, hi, e);
}

// grid.slots for one unit: the new index of old bin b (blocks of `scale`), clamped to [0, bins).
SKM_HD int64_t new_slot(int64_t b, int64_t old_first, int64_t old_e, int64_t first, int64_t e, int64_t bins,
                        int64_t scale) {
  const int64_t base_old = floor_div(old_first, scale), base_new = floor_div(first, scale);
  const int64_t shift = iclamp(e - old_e, 0, 62);
  return iclamp(((base_old + b) >> shift) - base_new, 0, bins - 1);
}

SKM_HD uint64_t image_hash(int64_t index) {  // examples.image_hash
  uint64_t x = (static_cast<uint64_t>(index) + 0x9E3779B97FULL) & kMask;
  x ^= x >> 20;
  x = (x * 0xBF58476D1DULL) & kMask;
  x ^= x >> 17;
  x = (x * 0x94D049BB13ULL) & kMask;
  return x ^ (x >> 20);
}

// Insert (h, idx) into a row of m ascending hashes when it beats the largest.
SKM_HD void insert_bottom(int64_t* hashes, int64_t* index, int64_t m, int64_t h, int64_t idx) {
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

SKM_HD int64_t sketch_key(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7FFFFFFFu) >> kShift;
}

// RunningHistogram.add_reference for one unit: counts (64,), inf [-inf, +inf].
SKM_HD void histogram_unit(const Column& col, double& lo, double& hi, int64_t& e, int64_t* counts, int64_t* inf) {
  int64_t old_first = 0, old_e = 0;
  advance(col, lo, hi, e, old_first, old_e);
  const int64_t first = first_bin(lo, e);
  if (old_first != first || old_e != e) {
    int64_t moved[kBins];
    for (int64_t b = 0; b < kBins; ++b) moved[b] = 0;
    for (int64_t b = 0; b < kBins; ++b) moved[new_slot(b, old_first, old_e, first, e, kBins, 1)] += counts[b];
    for (int64_t b = 0; b < kBins; ++b) counts[b] = moved[b];
  }
  const double step = pow2(-e);
  for (int64_t i = 0; i < col.n; ++i) {
    const float v = col.at(i);
    if (finite(v)) {
      ++counts[iclamp(floor_int(double{v} * step) - first, 0, kBins - 1)];
    } else if (v == -pos_inf()) {
      ++inf[0];
    } else if (v == pos_inf()) {
      ++inf[1];
    }
  }
}

// QuantileSketch.add_reference for one unit: counts (2, 512) by sign, top (2,), special (3,).
SKM_HD void sketch_unit(const Column& col, int32_t* counts, int64_t* top, int64_t* special) {
  int64_t batch_top[2] = {-1, -1};
  for (int64_t i = 0; i < col.n; ++i) {
    const float v = col.at(i);
    if (finite(v) && v != 0.0f) {
      int64_t& t = batch_top[v > 0.0f];
      t = imax(t, sketch_key(v));
    }
  }
  for (int s = 0; s < 2; ++s) {
    const int64_t delta = iclamp(imax(top[s], batch_top[s]) - top[s], 0, kBuckets);
    if (delta > 0) {  // sketch.shifted: slot b -> max(b - delta, 0)
      int32_t* row = counts + s * kBuckets;
      int32_t low = 0;
      for (int64_t b = 0; b <= imin(delta, kBuckets - 1); ++b) low += row[b];
      for (int64_t b = 1; b < kBuckets; ++b) row[b] = b + delta < kBuckets ? row[b + delta] : 0;
      row[0] = low;
      top[s] = imax(top[s], batch_top[s]);
    }
  }
  for (int64_t i = 0; i < col.n; ++i) {
    const float v = col.at(i);
    if (v == -pos_inf()) {
      ++special[0];
    } else if (v == 0.0f) {
      ++special[1];
    } else if (v == pos_inf()) {
      ++special[2];
    } else if (!is_nan(v)) {
      const int s = v > 0.0f;
      ++counts[s * kBuckets + iclamp(sketch_key(v) - (top[s] - (kBuckets - 1)), 0, kBuckets - 1)];
    }
  }
}

// QuantileExamples.add_reference for one unit: hashes / index (19, m); h[i] the image hashes of
// the batch, ids[i] its image indices; scratch_h / scratch_i (19 * m) scratch space.
SKM_HD void examples_unit(const Column& col, const int64_t* h, const int64_t* ids, int64_t m, double& lo, double& hi,
                          int64_t& e, int64_t* hashes, int64_t* index, int64_t* scratch_h, int64_t* scratch_i) {
  int64_t old_first = 0, old_e = 0;
  advance(col, lo, hi, e, old_first, old_e);
  const int64_t first = first_bin(lo, e);
  if (floor_div(old_first, kScale) != floor_div(first, kScale) || old_e != e) {
    // move each bin's picks to its new bin, keeping the m smallest hashes of each
    for (int64_t j = 0; j < kSlots * m; ++j) {
      scratch_h[j] = hashes[j];
      scratch_i[j] = index[j];
    }
    for (int64_t j = m; j < (kSlots - 1) * m; ++j) {
      hashes[j] = kEmptyHash;
      index[j] = -1;
    }
    for (int64_t b = 0; b < kLevels; ++b) {
      const int64_t to = 1 + new_slot(b, old_first, old_e, first, e, kLevels, kScale);
      for (int64_t j = 0; j < m; ++j) {
        const int64_t at = (1 + b) * m + j;
        if (scratch_i[at] >= 0) insert_bottom(hashes + to * m, index + to * m, m, scratch_h[at], scratch_i[at]);
      }
    }
  }
  const double step = pow2(-e);
  const int64_t base = floor_div(first, kScale);
  for (int64_t i = 0; i < col.n; ++i) {
    const float v = col.at(i);
    if (is_nan(v)) continue;
    int64_t slot;
    if (finite(v)) {
      slot = iclamp(floor_div(floor_int(double{v} * step), kScale) - base + 1, 1, kLevels);
    } else {
      slot = v > 0 ? kSlots - 1 : 0;
    }
    insert_bottom(hashes + slot * m, index + slot * m, m, h[i], ids[i]);
  }
}

// The first position of a map (len elements) equal to v, else len - 1 (v is the map's maximum,
// so it is there). The CPU kernel passes a vectorised finder with this result.
struct ScanFirstEqual {
  SKM_HD int64_t operator()(const float* map, int64_t len, float v) const {
    int64_t p = 0;
    while (p < len - 1 && map[p] != v) ++p;
    return p;
  }
};

// BottomK.update_reference for one unit: the k-deep top-k state of the negated maxima; a new
// entry's position is the first in its map (maps + i * map_stride, len elements) equal to it.
template <typename FirstEqual>
SKM_HD void bottomk_unit(const Column& col, const float* maps, int64_t map_stride, int64_t len, const int64_t* ids,
                         int64_t k, float* values, int64_t* index, int64_t* position, int64_t* nan_count,
                         FirstEqual first_equal) {
  for (int64_t i = 0; i < col.n; ++i) {
    const float v = col.at(i);
    if (is_nan(v)) {
      ++*nan_count;
      continue;
    }
    if (!ranks_before(-v, ids[i], values[k - 1], index[k - 1])) continue;
    insert_candidate(values, index, position, k, -v, ids[i], first_equal(maps + i * map_stride, len, v));
  }
}

}  // namespace dist
}  // namespace sketchmine
