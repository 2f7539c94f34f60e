// How finely the CPU kernels split work across at::parallel_for tasks.
//
// A parallel region costs the waiting threads' spinning (OpenMP workers spin at the barrier
// and for a while after it): on a busy 2-core machine a region over a few hundred
// microseconds of work burns 3-6x that in CPU time, more than the work itself. So a region
// only splits into tasks of at least kMinTaskWork elementary steps (an element read, an
// insertion tried); smaller work runs on the calling thread. The mining pass's kernels take their grain
// from here. For the top-k, 2^15 left 2-3x the single-thread CPU with 2 threads, 2^18
// the same as never splitting (benchmarks/accumulator_cost.py; RESULTS.md, "Session 17: thread
// grain of the mining accumulators"). A batch of 64 then splits only the convolutions' scans.
#pragma once

#include <algorithm>
#include <cstdint>

namespace sketchmine {

constexpr int64_t kMinTaskWork = int64_t{1} << 18;

// The grain (items per task) for items of `work_per_item` steps each, at least `at_least`.
inline int64_t task_grain(int64_t work_per_item, int64_t at_least = 1) {
  return std::max<int64_t>(at_least, kMinTaskWork / std::max<int64_t>(work_per_item, 1));
}

}  // namespace sketchmine
