// CPU kernel of topk_update: a parallel spatial reduction per (image, channel),
// then a parallel merge per channel. Both phases are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "../grain.h"
#include "first_equal.h"
#include "../ops.h"
#include "../topk_common.h"

namespace sketchmine {
namespace {

// Spatial max of one (image, channel) row, ignoring NaN; `pos` is the first
// position holding the max, or -1 when every element is NaN.
//
// Generic path (half, bfloat16, strided rows): one scalar pass.
template <typename T>
void scan_row(const T* row, int64_t len, int64_t stride, float& best, int64_t& pos,
              int64_t& nans) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float m = kNegInf;
  int64_t p = -1, n_nan = 0;
  for (int64_t i = 0; i < len; ++i) {
    const float v = static_cast<float>(row[i * stride]);
    if (v != v) {
      ++n_nan;
    } else if (v > m || (p < 0 && v == kNegInf)) {  // a row of -inf keeps its first element
      m = v;
      p = i;
    }
  }
  best = m;
  pos = p;
  nans = n_nan;
}

// Contiguous float32 rows, the common case, in two vector passes over a row that is
// then in L1/L2: (1) the max ignoring NaN (maxps(x, m) keeps m when x is NaN) and an
// "any NaN" flag; (2) the first element equal to that max, which stops at the hit.
// NaN are counted only for rows that have one. The result equals the scalar path.
#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>

inline float hmax4(__m128 v) {
  v = _mm_max_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm_max_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(v);
}

int64_t count_nan(const float* row, int64_t len) {
  int64_t n = 0;
  for (int64_t i = 0; i < len; ++i) n += row[i] != row[i];
  return n;
}

void scan_row_sse(const float* row, int64_t len, float& best, int64_t& pos, int64_t& nans) {
  const __m128 ninf = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  __m128 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  __m128 nan = _mm_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m128 a = _mm_loadu_ps(row + i), b = _mm_loadu_ps(row + i + 4);
    const __m128 c = _mm_loadu_ps(row + i + 8), d = _mm_loadu_ps(row + i + 12);
    m0 = _mm_max_ps(a, m0);
    m1 = _mm_max_ps(b, m1);
    m2 = _mm_max_ps(c, m2);
    m3 = _mm_max_ps(d, m3);
    nan = _mm_or_ps(nan, _mm_or_ps(_mm_cmpunord_ps(a, b), _mm_cmpunord_ps(c, d)));
  }
  for (; i + 4 <= len; i += 4) {
    const __m128 a = _mm_loadu_ps(row + i);
    m0 = _mm_max_ps(a, m0);
    nan = _mm_or_ps(nan, _mm_cmpunord_ps(a, a));
  }
  float m = hmax4(_mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)));
  bool any_nan = _mm_movemask_ps(nan) != 0;
  for (; i < len; ++i) {
    const float v = row[i];
    if (v != v) any_nan = true;
    else if (v > m) m = v;
  }
  pos = first_equal_sse(row, len, m);  // -1 only when every element is NaN
  // the first maximum's own value: maxps keeps either zero of -0.0 and +0.0
  best = pos >= 0 ? row[pos] : m;
  nans = any_nan ? count_nan(row, len) : 0;
}

#if defined(__GNUC__) && !defined(__AVX2__)
#define SKM_AVX2 __attribute__((target("avx2")))
#else
#define SKM_AVX2
#endif

SKM_AVX2 void scan_row_avx2(const float* row, int64_t len, float& best, int64_t& pos,
                            int64_t& nans) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= len; i += 32) {
    const __m256 a = _mm256_loadu_ps(row + i), b = _mm256_loadu_ps(row + i + 8);
    const __m256 c = _mm256_loadu_ps(row + i + 16), d = _mm256_loadu_ps(row + i + 24);
    m0 = _mm256_max_ps(a, m0);
    m1 = _mm256_max_ps(b, m1);
    m2 = _mm256_max_ps(c, m2);
    m3 = _mm256_max_ps(d, m3);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_UNORD_Q),
                                         _mm256_cmp_ps(c, d, _CMP_UNORD_Q)));
  }
  for (; i + 8 <= len; i += 8) {
    const __m256 a = _mm256_loadu_ps(row + i);
    m0 = _mm256_max_ps(a, m0);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  const __m256 mm = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
  float m = hmax4(_mm_max_ps(_mm256_castps256_ps128(mm), _mm256_extractf128_ps(mm, 1)));
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  for (; i < len; ++i) {
    const float v = row[i];
    if (v != v) any_nan = true;
    else if (v > m) m = v;
  }
  best = m;
  const __m256 t = _mm256_set1_ps(m);
  int64_t p = -1, j = 0;
  for (; j + 8 <= len; j += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), t, _CMP_EQ_OQ));
    if (hit) {
      p = j + __builtin_ctz(hit);
      break;
    }
  }
  if (p < 0) {
    for (; j < len; ++j) {
      if (row[j] == m) {
        p = j;
        break;
      }
    }
  }
  pos = p;
  best = p >= 0 ? row[p] : m;  // as scan_row_sse: the first maximum's sign of zero
  nans = any_nan ? count_nan(row, len) : 0;
}

bool has_avx2() {
#if defined(__GNUC__)
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
#else
  return false;
#endif
}

template <>
void scan_row<float>(const float* row, int64_t len, int64_t stride, float& best, int64_t& pos,
                     int64_t& nans) {
  if (stride != 1) {
    float m = -std::numeric_limits<float>::infinity();
    int64_t p = -1, n_nan = 0;
    for (int64_t i = 0; i < len; ++i) {
      const float v = row[i * stride];
      if (v != v) {
        ++n_nan;
      } else if (v > m || (p < 0 && v == m)) {
        m = v;
        p = i;
      }
    }
    best = m;
    pos = p;
    nans = n_nan;
  } else if (has_avx2()) {
    scan_row_avx2(row, len, best, pos, nans);
  } else {
    scan_row_sse(row, len, best, pos, nans);
  }
}
#endif

// The k-th value of each channel of a block, kept contiguous: a candidate strictly below it
// cannot enter (ranks_before needs a larger value, or an equal one with a smaller image), and
// after the first batches nearly every candidate is, so the merge reads this small array
// instead of each channel's k slots (one cache line per channel). An empty slot is -inf
// (anything but NaN may enter; NaN is never below, so the caller counts it).
struct Floors {
  std::vector<float> at;
  const float* vals;
  const int64_t* idx;
  int64_t k, begin;
  Floors(const float* v, const int64_t* i, int64_t k_, int64_t b, int64_t e)
      : at(e - b), vals(v), idx(i), k(k_), begin(b) {
    for (int64_t ch = b; ch < e; ++ch) update(ch);
  }
  bool below(int64_t ch, float v) const { return v < at[ch - begin]; }
  void update(int64_t ch) {
    at[ch - begin] = idx[ch * k + k - 1] < 0 ? -std::numeric_limits<float>::infinity() : vals[ch * k + k - 1];
  }
};

// One FC candidate (value v of image img in channel ch) against the channel's state: below
// its floor it cannot enter; NaN is counted; else inserted.
struct FcState {
  float* vals;
  int64_t* idx;
  int64_t* pos;
  int64_t* nanc;
  int64_t k;
};

inline void fc_step(Floors& floor, const FcState& st, int64_t ch, float v, int64_t img) {
  if (floor.below(ch, v)) return;
  if (v != v) {
    ++st.nanc[ch];
    return;
  }
  insert_candidate(st.vals + ch * st.k, st.idx + ch * st.k, st.pos + ch * st.k, st.k, v, img, 0);
  floor.update(ch);
}

#if defined(__x86_64__) || defined(__SSE2__)
// FC rows of float32 with contiguous channels, the common case: each row is copied to the
// maxima and compared with 8 channels' floors at once, and only the lanes not below theirs (a
// candidate that may enter, or NaN: unordered compares as "not less") take fc_step, in channel
// order as in the scalar loop. After the first batches a batch of 64 rows inserts into a few
// channels only, so the scalar loop's per-candidate branch was most of this op's time on
// AlexNet's fc layers (1.3 ms of each 64 x 4,096 batch).
SKM_AVX2 void fc_rows_avx2(const float* data, int64_t sn, int64_t n, int64_t c, int64_t begin,
                           int64_t end, const int64_t* img, Floors& floor, const FcState& st,
                           float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* row = data + i * sn;
    float* o = out + i * c;
    int64_t ch = begin;
    for (; ch + 8 <= end; ch += 8) {
      const __m256 v = _mm256_loadu_ps(row + ch);
      _mm256_storeu_ps(o + ch, v);
      const __m256 f = _mm256_loadu_ps(floor.at.data() + (ch - begin));
      unsigned hit = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, f, _CMP_NLT_UQ)));
      while (hit) {
        const int64_t j = ch + __builtin_ctz(hit);
        hit &= hit - 1;
        fc_step(floor, st, j, row[j], img[i]);
      }
    }
    for (; ch < end; ++ch) {
      o[ch] = row[ch];
      fc_step(floor, st, ch, row[ch], img[i]);
    }
  }
}
#endif

template <typename T>
void topk_update_cpu_impl(const at::Tensor& acts3, const at::Tensor& image_index,
                          at::Tensor& values, at::Tensor& index, at::Tensor& position,
                          at::Tensor& nan_count, at::Tensor& maxima) {
  const int64_t n = acts3.size(0), c = acts3.size(1), len = acts3.size(2);
  const int64_t k = values.size(1);
  const int64_t sn = acts3.stride(0), sc = acts3.stride(1), sl = acts3.stride(2);
  const T* data = acts3.const_data_ptr<T>();
  const int64_t* img = image_index.const_data_ptr<int64_t>();
  float* vals = values.data_ptr<float>();
  int64_t* idx = index.data_ptr<int64_t>();
  int64_t* pos = position.data_ptr<int64_t>();
  int64_t* nanc = nan_count.data_ptr<int64_t>();

  if (len == 1) {
    // No grid (FC, softmax): the activations are the candidates. Channel blocks in
    // parallel (only when each has enough work, see grain.h); within a block, image-major so
    // each image's row is read contiguously while the block's states stay in cache.
    float* out = maxima.data_ptr<float>();
    at::parallel_for(0, c, task_grain(n, 64), [&](int64_t begin, int64_t end) {
      Floors floor(vals, idx, k, begin, end);
      FcState st{vals, idx, pos, nanc, k};
#if defined(__x86_64__) || defined(__SSE2__)
      if constexpr (std::is_same_v<T, float>) {
        if (sc == 1 && has_avx2()) {
          fc_rows_avx2(data, sn, n, c, begin, end, img, floor, st, out);
          return;
        }
      }
#endif
      for (int64_t i = 0; i < n; ++i) {
        const T* row = data + i * sn;
        for (int64_t ch = begin; ch < end; ++ch) {
          const float v = static_cast<float>(row[ch * sc]);
          out[i * c + ch] = v;  // the returned maxima: the rows themselves, as float32
          fc_step(floor, st, ch, v, img[i]);
        }
      }
    });
    return;
  }

  // The candidates' values are the op's output: the per-(image, channel) maxima.
  float* cand_v = maxima.data_ptr<float>();
  std::vector<int64_t> cand_p(n * c), cand_nan(n * c);

  // Phase 1: one spatial reduction per (image, channel), len elements each.
  at::parallel_for(0, n * c, task_grain(len, 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r / c, ch = r % c;
      scan_row(data + i * sn + ch * sc, len, sl, cand_v[r], cand_p[r], cand_nan[r]);
      if (cand_p[r] < 0) cand_v[r] = std::numeric_limits<float>::quiet_NaN();  // all NaN
    }
  });

  // Phase 2: merge the N candidates of each channel into its k-deep state; image-major
  // within a channel block, as above (the order of insertion does not change the result).
  at::parallel_for(0, c, task_grain(n, 64), [&](int64_t begin, int64_t end) {
    Floors floor(vals, idx, k, begin, end);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t ch = begin; ch < end; ++ch) {
        const int64_t r = i * c + ch;
        nanc[ch] += cand_nan[r];
        if (cand_p[r] < 0 || floor.below(ch, cand_v[r])) continue;
        insert_candidate(vals + ch * k, idx + ch * k, pos + ch * k, k, cand_v[r], img[i],
                         cand_p[r]);
        floor.update(ch);
      }
    }
  });
}

}  // namespace

at::Tensor topk_update_cpu(const at::Tensor& acts, const at::Tensor& image_index,
                           at::Tensor& values, at::Tensor& index, at::Tensor& position,
                           at::Tensor& nan_count) {
  const at::Tensor acts3 =
      check_topk_args(acts, image_index, values, index, position, nan_count);
  const int64_t n = acts3.size(0), c = acts3.size(1);
  const auto opts = acts.options().dtype(at::kFloat);
  if (n == 0 || acts3.size(2) == 0) {
    return at::full({n, c}, std::numeric_limits<float>::quiet_NaN(), opts);
  }
  // Filled by the kernel: FC/softmax rows are their own maxima (copied in the merge loop, not
  // by a separate parallel copy), spatial layers' are the scans' results.
  at::Tensor maxima = at::empty({n, c}, opts);
  const at::Tensor img = image_index.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts3.scalar_type(), "topk_update_cpu",
                                  [&] {
                                    topk_update_cpu_impl<scalar_t>(acts3, img, values, index,
                                                                   position, nan_count, maxima);
                                  });
  return maxima;
}

}  // namespace sketchmine
