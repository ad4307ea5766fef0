#pragma once
// A bounded cache of large CPU blocks in front of libtorch's CPU allocator.
//
// glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and
// unmaps it on free, so each large activation of a convolutional decoder is faulted in and
// zeroed by the kernel page by page, op after op: measured ~20-25% of the Wan VAE decode's CPU
// time on this box. The same sizes recur chunk after chunk (and step after step), so freed large
// blocks are kept and handed out again (the smallest idle block that fits with at most a quarter
// to spare). Idle blocks are bounded (DIFFSYNTH_CPU_BLOCK_CACHE_MB, default 512; 0 turns the
// cache off) and the least recently freed go first; release_cpu_block_cache() returns them all
// (the pipelines call it when a generation ends). Blocks below kMinCachedBlock go to libtorch's
// default allocator as before.
// Off in sanitizer builds, so AddressSanitizer still sees every use after free.
#include <cstddef>

namespace diffsynth {

struct CPUBlockCacheStats {
  std::size_t idle_bytes = 0;  // cached, not in use
  std::size_t idle_blocks = 0;
  std::size_t hits = 0, misses = 0;  // large allocations served from the cache / fresh
  std::size_t limit_bytes = 0;       // the bound on idle_bytes (0: cache off)
  bool active = false;               // installed as libtorch's CPU allocator
};

inline constexpr std::size_t kMinCachedBlock = std::size_t{4} << 20;  // 4 MiB

// Frees every idle block (in-use blocks are freed when their tensors go).
void release_cpu_block_cache();
CPUBlockCacheStats cpu_block_cache_stats();
// The bound on idle bytes; 0 frees the idle blocks and stops caching (no effect where the cache
// is not installed: sanitizer builds, DIFFSYNTH_CPU_BLOCK_CACHE_MB=0). Mainly for tests.
void set_cpu_block_cache_limit(std::size_t bytes);

}  // namespace diffsynth
