// core/cpu_block_cache.h: large CPU blocks freed by libtorch are handed out again, idle bytes
// stay under the bound, release returns them, small blocks and sanitizer builds bypass it.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "core/cpu_block_cache.h"

using namespace diffsynth;

namespace {
constexpr std::int64_t kMiB = 1 << 20;

// A float tensor of `mib` MiB, written so its pages are really used.
torch::Tensor block(std::int64_t mib) { return torch::ones({mib * kMiB / 4}); }
}  // namespace

TEST(CPUBlockCache, ReusesFreedLargeBlocksWithinTheBound) {
  const auto before = cpu_block_cache_stats();
  if (!before.active) {
    // Sanitizer builds (and DIFFSYNTH_CPU_BLOCK_CACHE_MB=0) leave libtorch's allocator alone:
    // nothing is cached, whatever is allocated.
    { auto t = block(8); }
    const auto after = cpu_block_cache_stats();
    EXPECT_EQ(after.idle_bytes, 0u);
    EXPECT_EQ(after.hits, before.hits);
    EXPECT_EQ(after.misses, before.misses);
    return;
  }
  release_cpu_block_cache();
  set_cpu_block_cache_limit(20 * kMiB);

  void* first = nullptr;
  {
    auto t = block(8);
    first = t.data_ptr();
  }
  auto s = cpu_block_cache_stats();
  EXPECT_EQ(s.idle_bytes, static_cast<std::size_t>(8 * kMiB));
  EXPECT_EQ(s.idle_blocks, 1u);
  {
    auto t = block(8);  // the same size: the same block, not a fresh mapping
    EXPECT_EQ(t.data_ptr(), first);
    EXPECT_EQ(cpu_block_cache_stats().hits, s.hits + 1);
    EXPECT_EQ(cpu_block_cache_stats().idle_bytes, 0u);
    EXPECT_EQ(t.sum().item<float>(), 8.0f * kMiB / 4);  // and it holds what was written
  }
  {
    // 7 MiB fits the 8 MiB block (an eighth to spare); 5 MiB would waste more than a quarter.
    auto t = block(7);
    EXPECT_EQ(t.data_ptr(), first);
    auto u = block(5);
    EXPECT_NE(u.data_ptr(), first);
  }
  // Idle: 8 + 5 MiB. Three more 8 MiB blocks exceed 20 MiB: the least recently freed go first.
  {
    auto a = block(8), b = block(8), c = block(6);
  }
  s = cpu_block_cache_stats();
  EXPECT_LE(s.idle_bytes, static_cast<std::size_t>(20 * kMiB));
  EXPECT_GT(s.idle_bytes, 0u);
  // Blocks larger than the whole bound are not kept.
  { auto big = block(32); }
  EXPECT_LE(cpu_block_cache_stats().idle_bytes, static_cast<std::size_t>(20 * kMiB));
  // Small tensors go to libtorch's default allocator.
  const auto hits = cpu_block_cache_stats().hits, misses = cpu_block_cache_stats().misses;
  { auto small = torch::ones({1024}); }
  EXPECT_EQ(cpu_block_cache_stats().hits, hits);
  EXPECT_EQ(cpu_block_cache_stats().misses, misses);

  release_cpu_block_cache();
  EXPECT_EQ(cpu_block_cache_stats().idle_bytes, 0u);
  EXPECT_EQ(cpu_block_cache_stats().idle_blocks, 0u);
  set_cpu_block_cache_limit(before.limit_bytes);
}

TEST(CPUBlockCache, ResizedAndClonedTensorsKeepTheirValues) {
  // Storage growth (resize_) copies through the allocator's copy_data; clones of cached blocks
  // are independent of the block they came from.
  auto t = torch::arange(5 * kMiB / 4, torch::kFloat);
  const float last = t[-1].item<float>();
  t.resize_({6 * kMiB / 4});
  EXPECT_EQ(t[5 * kMiB / 4 - 1].item<float>(), last);
  auto c = t.clone();
  t.zero_();
  EXPECT_EQ(c[5 * kMiB / 4 - 1].item<float>(), last);
}
