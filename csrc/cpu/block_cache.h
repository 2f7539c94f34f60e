// Large CPU tensors' memory kept by size while mining (block_cache.cpp).
#pragma once

#include <cstddef>

namespace sketchmine {

struct BlockCacheCounts {
  size_t reused;      // large allocations served from a block freed before
  size_t fresh;       // large allocations that took new memory
  size_t evicted;     // kept blocks unmapped to bound what the cache holds
  size_t idle_bytes;  // kept and unused when the cache closed (then given back)
};

// Installs the cache as torch's CPU allocator; false when it cannot (already active, or another
// allocator registered with a higher priority) and nothing changed.
bool block_cache_enter();

// Stops keeping blocks and unmaps the kept ones; blocks still in use are unmapped when their
// tensors are freed. The allocator stays installed, passing every request to the one it replaced
// (see block_cache.cpp). The counts since enter.
BlockCacheCounts block_cache_exit();

}  // namespace sketchmine
