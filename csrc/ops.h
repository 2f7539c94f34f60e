// Declarations shared by the op registration and the per-device kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace sketchmine {

// Checks every argument of topk_update (shapes, dtypes, devices) and returns the
// activations viewed as (N, C, L).
at::Tensor check_topk_args(const at::Tensor& acts, const at::Tensor& image_index,
                           const at::Tensor& values, const at::Tensor& index,
                           const at::Tensor& position, const at::Tensor& nan_count);

// Checks crop_patches' arguments; returns nothing, throws with a message.
void check_crop_args(const at::Tensor& images, const at::Tensor& image_index, const at::Tensor& corners,
                     int64_t height, int64_t width, double fill);
// Global image indices are >= 0 (a negative one marks an empty slot); checked on the CPU.
void check_image_ids(const char* op, const at::Tensor& image_index);

at::Tensor crop_patches_cpu(const at::Tensor& images, const at::Tensor& image_index,
                            const at::Tensor& corners, int64_t height, int64_t width, double fill);

// Returns the (N, C) float32 per-(image, channel) maxima it ranked (NaN: the map was all NaN).
at::Tensor topk_update_cpu(const at::Tensor& acts, const at::Tensor& image_index,
                           at::Tensor& values, at::Tensor& index, at::Tensor& position,
                           at::Tensor& nan_count);

// The unit-distribution statistics (stats/histogram.py, sketch.py, examples.py), in place on
// the packed per-unit state; maxima (N, C) float32, any strides.
void histogram_update_cpu(const at::Tensor& maxima, at::Tensor& lo, at::Tensor& hi, at::Tensor& e,
                          at::Tensor& counts, at::Tensor& inf);
void sketch_update_cpu(const at::Tensor& maxima, at::Tensor& counts, at::Tensor& top, at::Tensor& special);
void examples_update_cpu(const at::Tensor& maxima, const at::Tensor& image_index, at::Tensor& lo, at::Tensor& hi,
                         at::Tensor& e, at::Tensor& hashes, at::Tensor& index);
// The bottom-k (stats/bottomk.py): the top-k state of the negated maxima, each new entry's
// position the first in its map (acts (N, C, L)) equal to the maximum.
void bottomk_update_cpu(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                        at::Tensor& values, at::Tensor& index, at::Tensor& position, at::Tensor& nan_count);
// Their argument checks (shapes, dtypes, one device), shared by both devices' kernels.
void check_histogram_args(const at::Tensor& maxima, const at::Tensor& lo, const at::Tensor& hi, const at::Tensor& e,
                          const at::Tensor& counts, const at::Tensor& inf);
void check_sketch_args(const at::Tensor& maxima, const at::Tensor& counts, const at::Tensor& top,
                       const at::Tensor& special);
void check_examples_args(const at::Tensor& maxima, const at::Tensor& image_index, const at::Tensor& lo,
                         const at::Tensor& hi, const at::Tensor& e, const at::Tensor& hashes,
                         const at::Tensor& index);
void check_bottomk_args(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                        const at::Tensor& values, const at::Tensor& index, const at::Tensor& position,
                        const at::Tensor& nan_count);

// Per-batch sums over the (N, C) image maxima (csrc/cpu/maxima_sums.cpp; CPU only, other devices
// run the Python classes' torch path): the unit moments (stats/moments.py) and the class sums
// (stats/classstats.py; returns the NaN maxima it left out).
void moments_update_cpu(const at::Tensor& maxima, at::Tensor& sum, at::Tensor& count, at::Tensor& firing);
int64_t class_sums_update_cpu(const at::Tensor& maxima, const at::Tensor& rows, at::Tensor& sums);
// The share of ink pixels per image of a normalised input batch (stats/ink.py; CPU only):
// gray = sum_c x_c * scale_c (+ offset), background the border's lower median.
at::Tensor ink_density_cpu(const at::Tensor& x, at::ArrayRef<double> scale, std::optional<double> offset,
                           double threshold);
// The preprocessing's normalisation in one pass (data/preprocess.py; CPU only): (N, c, H, W) with
// c = channels or 1 (repeated) → (N, channels, H, W), (x - mean) / std per channel.
at::Tensor normalise_cpu(const at::Tensor& x, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                         int64_t channels);

#ifdef SKETCHMINE_WITH_CUDA
void histogram_update_cuda(const at::Tensor& maxima, at::Tensor& lo, at::Tensor& hi, at::Tensor& e,
                           at::Tensor& counts, at::Tensor& inf);
void sketch_update_cuda(const at::Tensor& maxima, at::Tensor& counts, at::Tensor& top, at::Tensor& special);
void examples_update_cuda(const at::Tensor& maxima, const at::Tensor& image_index, at::Tensor& lo, at::Tensor& hi,
                          at::Tensor& e, at::Tensor& hashes, at::Tensor& index);
void bottomk_update_cuda(const at::Tensor& maxima, const at::Tensor& acts, const at::Tensor& image_index,
                         at::Tensor& values, at::Tensor& index, at::Tensor& position, at::Tensor& nan_count);

at::Tensor crop_patches_cuda(const at::Tensor& images, const at::Tensor& image_index,
                             const at::Tensor& corners, int64_t height, int64_t width, double fill);

at::Tensor topk_update_cuda(const at::Tensor& acts, const at::Tensor& image_index,
                            at::Tensor& values, at::Tensor& index, at::Tensor& position,
                            at::Tensor& nan_count);
#endif

}  // namespace sketchmine
