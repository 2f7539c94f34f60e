// Large CPU tensors' memory kept for the next batch while mining (python/sketchmine/mining/allocator.py).
//
// Why: every batch asks for the same sizes as the batch before. glibc's heap serves them, but a
// model whose batch frees more than the heap keeps (VGG-19 at batch 64: 3-4 GB) has its heap
// trimmed and faulted back every batch, ≈ 15-20 % of its forward in system time on a 2-core VM;
// never trimming the heap instead lets its layout drift until its peak grows with the number of
// batches (benchmarks/RESULTS.md, session 24). Here a block of at least kMinBlock bytes is mapped
// on its own, and when freed it waits for the next request it fits (at most twice its size): after
// the first batch the large allocations are the previous batch's blocks, with no page faults, no
// heap to fragment, and every block unmapped when the cache closes.
//
// Once installed the allocator stays torch's CPU allocator, delegating everything else to the one
// it replaced: a block mapped here may be freed through the installed allocator's raw deleter
// (oneDNN frees that way) at any later time, and only this code knows the block is not malloc's.
// The state is never destroyed: a tensor may outlive the pass and the interpreter's teardown.
#include "block_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace sketchmine {
namespace {

constexpr size_t kMinBlock = size_t{1} << 20;  // smaller ones: the heap reuses them well

struct State {
  std::mutex mu;
  bool installed = false;
  std::atomic<bool> active{false};  // read without the lock on every allocation
  c10::Allocator* previous = nullptr;  // set once, before installing; never changed after
  c10::DeleterFnPtr previous_raw = nullptr;
  std::unordered_map<void*, size_t> mapped;  // blocks handed out, by their mapped size
  std::map<size_t, std::vector<void*>> idle;  // freed while active, by mapped size
  size_t idle_bytes = 0, live_bytes = 0, live_peak = 0;  // live: blocks handed out
  size_t reused = 0, fresh = 0, evicted = 0;
};

State& state() {
  static State* s = new State();
  return *s;
}

void unmap(void* p, size_t n) { munmap(p, n); }

void release(void* p) {
  State& s = state();
  c10::DeleterFnPtr other = nullptr;
  {
    std::lock_guard<std::mutex> g(s.mu);
    auto it = s.mapped.find(p);
    if (it == s.mapped.end()) {
      other = s.previous_raw;  // the replaced allocator's memory (its raw path)
    } else {
      const size_t n = it->second;
      s.mapped.erase(it);
      s.live_bytes -= n;
      if (s.active) {
        s.idle[n].push_back(p);
        s.idle_bytes += n;
        return;
      }
      unmap(p, n);
      return;
    }
  }
  TORCH_INTERNAL_ASSERT(other != nullptr, "sketchmine block cache: a pointer it did not hand out");
  other(p);
}

void hand_out(State& s, void* p, size_t n) {  // with s.mu held
  s.mapped.emplace(p, n);
  s.live_bytes += n;
  s.live_peak = std::max(s.live_peak, s.live_bytes);
}

// One kept block of `it`'s size, no longer kept.
void* take_idle(State& s, std::map<size_t, std::vector<void*>>::iterator it) {  // with s.mu held
  void* p = it->second.back();
  it->second.pop_back();
  s.idle_bytes -= it->first;
  if (it->second.empty()) s.idle.erase(it);
  return p;
}

// Before mapping `n` more bytes: unmap kept blocks, smallest first, while everything mapped would
// exceed twice the most the pass has had in use at once. A pass whose batches keep their sizes
// never gets here after its first batch; one whose sizes keep changing (images at their own
// sizes) would otherwise keep a block of every size it ever saw.
void evict_for(State& s, size_t n) {  // with s.mu held
  const size_t bound = 2 * std::max(s.live_peak, s.live_bytes + n);
  while (!s.idle.empty() && s.live_bytes + s.idle_bytes + n > bound) {
    auto it = s.idle.begin();
    const size_t size = it->first;
    unmap(take_idle(s, it), size);
    ++s.evicted;
  }
}

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    State& s = state();
    if (n < kMinBlock || !s.active.load(std::memory_order_relaxed)) return s.previous->allocate(n);
    {
      std::lock_guard<std::mutex> g(s.mu);
      // the smallest kept block that fits, if at most twice the request: a batch's later, smaller
      // outputs reuse its first layers' blocks, as a heap would, instead of each size holding its own
      auto it = s.idle.lower_bound(n);
      if (it != s.idle.end() && it->first <= 2 * n) {
        const size_t size = it->first;
        void* p = take_idle(s, it);
        hand_out(s, p, size);
        ++s.reused;
        return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
      }
      evict_for(s, n);
    }
    // outside the lock; mapped with its pages (MAP_POPULATE): a tensor's block is written whole,
    // and one call is cheaper than a fault per page (a 1 MiB block's 256 faults took 5-15 ms in
    // some of AlexNet's batches on a 2-core VM, a populated one 0.4 ms; tests/test_allocator.py)
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "sketchmine: out of memory mapping ", n, " bytes for a CPU tensor");
    std::lock_guard<std::mutex> g(s.mu);
    hand_out(s, p, n);
    ++s.fresh;
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

BlockCache& instance() {
  static BlockCache* a = new BlockCache();
  return *a;
}

void after_fork_in_child() {
  // A DataLoader worker forked while mining: another thread may have held the lock at the fork,
  // and the worker's own tensors need no cache (the parent's idle blocks stay mapped, unused).
  State& s = state();
  new (&s.mu) std::mutex();
  s.active = false;
  s.idle.clear();
  s.idle_bytes = 0;
}

}  // namespace

bool block_cache_enter() {
  static const bool forks = pthread_atfork(nullptr, nullptr, &after_fork_in_child) == 0;
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  if (!forks || s.active) return false;
  if (!s.installed) {
    c10::Allocator* current = c10::GetCPUAllocator();
    c10::DeleterFnPtr current_raw = current->raw_deleter();
    if (current_raw == nullptr) return false;  // blocks freed through it could not be told apart
    s.previous = current;  // set first: allocate() delegates to it as soon as it is installed
    s.previous_raw = current_raw;
    c10::SetCPUAllocator(&instance(), /*priority=*/0);
    if (c10::GetCPUAllocator() != &instance()) return false;  // one registered with a higher priority
    s.installed = true;
  } else if (c10::GetCPUAllocator() != &instance()) {
    return false;  // replaced since by someone else
  }
  s.active = true;
  s.reused = s.fresh = s.evicted = 0;
  s.live_peak = s.live_bytes;
  return true;
}

BlockCacheCounts block_cache_exit() {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  BlockCacheCounts counts{s.reused, s.fresh, s.evicted, s.idle_bytes};
  s.active = false;
  for (auto& [n, blocks] : s.idle) {
    for (void* p : blocks) unmap(p, n);
  }
  s.idle.clear();
  s.idle_bytes = 0;
  return counts;
}

}  // namespace sketchmine
