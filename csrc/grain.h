// How finely the CPU kernels split work across at::parallel_for tasks.
//
// A parallel region costs the waiting threads' spinning (OpenMP workers spin at the barrier
// and for a while after it): on a busy 2-core machine a region over a few hundred
// microseconds of work burns 3-6x that in CPU time, more than the work itself. So a region
// only splits into tasks of at least kMinTaskWork elementary steps (an element read, an
// insertion tried); smaller work runs on the calling thread. Measured in
// benchmarks/accumulator_cost.py (RESULTS.md, "Session 17: thread grain").
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace sketchmine {

constexpr int64_t kMinTaskWork = int64_t{1} << 18;

// The grain (items per task) for items of `work_per_item` steps each, at least `at_least`.
inline int64_t task_grain(int64_t work_per_item, int64_t at_least = 1) {
  static const int64_t min_work = [] {
    const char* s = std::getenv("SKETCHMINE_MIN_TASK_WORK");  // TEMPORARY: threshold experiment
    return s ? std::max<int64_t>(1, std::atoll(s)) : kMinTaskWork;
  }();
  return std::max<int64_t>(at_least, min_work / std::max<int64_t>(work_per_item, 1));
}

}  // namespace sketchmine
