// CPU kernel of topk_update: a parallel spatial reduction per (image, channel),
// then a parallel merge per channel. Both phases are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <cstring>
#include <limits>
#include <vector>

#include "../ops.h"
#include "../topk_common.h"

namespace sketchmine {
namespace {

constexpr int64_t kBlock = 64;

// Max of kBlock contiguous elements ignoring NaN (-inf if all NaN); adds the NaN count.
// float uses GCC/Clang vector extensions: packed compares and blends on any x86-64.
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

inline float block_max(const float* x, int64_t& nans) {
  const float ninf = -std::numeric_limits<float>::infinity();
  v4f m0 = {ninf, ninf, ninf, ninf}, m1 = m0;
  v4i c0 = {0, 0, 0, 0}, c1 = c0;
  for (int64_t j = 0; j < kBlock; j += 8) {
    v4f a, b;
    std::memcpy(&a, x + j, sizeof(a));
    std::memcpy(&b, x + j + 4, sizeof(b));
    c0 -= (a != a);  // -1 where NaN
    c1 -= (b != b);
    const v4i ga = a > m0, gb = b > m1;  // NaN compares false: ignored
    m0 = (v4f)(((v4i)a & ga) | ((v4i)m0 & ~ga));
    m1 = (v4f)(((v4i)b & gb) | ((v4i)m1 & ~gb));
  }
  float bm = ninf;
  for (int l = 0; l < 4; ++l) {
    nans += c0[l] + c1[l];
    bm = m0[l] > bm ? m0[l] : bm;
    bm = m1[l] > bm ? m1[l] : bm;
  }
  return bm;
}

template <typename T>
inline float block_max(const T* x, int64_t& nans) {
  float bm = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < kBlock; ++j) {
    const float v = static_cast<float>(x[j]);
    nans += (v != v);
    bm = v > bm ? v : bm;
  }
  return bm;
}

// Spatial max of one (image, channel) row, ignoring NaN; `pos` is the first
// position holding the max, or -1 when every element is NaN.
//
// Contiguous rows are read once, in blocks of kBlock: a packed max and NaN count
// per block, and a block is rescanned for its first maximal element only when it
// beats the max so far, which happens a handful of times per row.
template <typename T>
void scan_row(const T* row, int64_t len, int64_t stride, float& best, int64_t& pos,
              int64_t& nans) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float m = kNegInf;
  int64_t p = -1, n_nan = 0, i = 0;
  if (stride == 1) {
    for (; i + kBlock <= len; i += kBlock) {
      const float bm = block_max(row + i, n_nan);
      if (bm > m) {
        m = bm;
        for (int64_t j = 0; j < kBlock; ++j) {
          if (static_cast<float>(row[i + j]) == bm) {
            p = i + j;
            break;
          }
        }
      }
    }
  }
  for (; i < len; ++i) {  // tail, or the whole row when strided
    const float v = static_cast<float>(row[i * stride]);
    if (v != v) {
      ++n_nan;
    } else if (v > m) {
      m = v;
      p = i;
    }
  }
  if (p < 0 && n_nan < len) {  // every non-NaN element is -inf: the first of them
    for (int64_t j = 0; j < len; ++j) {
      if (static_cast<float>(row[j * stride]) == kNegInf) {
        p = j;
        break;
      }
    }
  }
  best = m;
  pos = p;
  nans = n_nan;
}

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
    // parallel; within a block, image-major so each image's row is read contiguously
    // while the block's states stay in cache.
    at::parallel_for(0, c, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = 0; i < n; ++i) {
        const T* row = data + i * sn;
        for (int64_t ch = begin; ch < end; ++ch) {
          const float v = static_cast<float>(row[ch * sc]);
          if (v != v) {
            ++nanc[ch];
            continue;
          }
          insert_candidate(vals + ch * k, idx + ch * k, pos + ch * k, k, v, img[i], 0);
        }
      }
    });
    return;
  }

  // The candidates' values are the op's output: the per-(image, channel) maxima.
  float* cand_v = maxima.data_ptr<float>();
  std::vector<int64_t> cand_p(n * c), cand_nan(n * c);

  // Phase 1: one spatial reduction per (image, channel); grain keeps tasks ~32k elements.
  const int64_t grain = std::max<int64_t>(1, 32768 / len);
  at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r / c, ch = r % c;
      scan_row(data + i * sn + ch * sc, len, sl, cand_v[r], cand_p[r], cand_nan[r]);
      if (cand_p[r] < 0) cand_v[r] = std::numeric_limits<float>::quiet_NaN();  // all NaN
    }
  });

  // Phase 2: merge the N candidates of each channel into its k-deep state; image-major
  // within a channel block, as above (the order of insertion does not change the result).
  at::parallel_for(0, c, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t ch = begin; ch < end; ++ch) {
        const int64_t r = i * c + ch;
        nanc[ch] += cand_nan[r];
        if (cand_p[r] < 0) continue;
        insert_candidate(vals + ch * k, idx + ch * k, pos + ch * k, k, cand_v[r], img[i],
                         cand_p[r]);
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
  // FC/softmax rows are their own maxima (a float32 copy); spatial layers fill it below.
  at::Tensor maxima = acts3.size(2) == 1 ? acts3.reshape({n, c}).to(at::kFloat, false, true)
                                         : at::empty({n, c}, opts);
  const at::Tensor img = image_index.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts3.scalar_type(), "topk_update_cpu",
                                  [&] {
                                    topk_update_cpu_impl<scalar_t>(acts3, img, values, index,
                                                                   position, nan_count, maxima);
                                  });
  return maxima;
}

}  // namespace sketchmine
