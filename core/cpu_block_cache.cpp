#include "core/cpu_block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffsynth {

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitizerBuild = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitizerBuild = true;
#else
constexpr bool kSanitizerBuild = false;
#endif
#else
constexpr bool kSanitizerBuild = false;
#endif

constexpr std::size_t kPage = 4096;

std::size_t limit_from_env() {
  const char* v = std::getenv("DIFFSYNTH_CPU_BLOCK_CACHE_MB");
  if (!v || !*v) return std::size_t{512} << 20;
  char* end = nullptr;
  const unsigned long long mb = std::strtoull(v, &end, 10);
  if (end == v || *end != '\0') {
    std::fprintf(stderr, "diffsynth: warning: DIFFSYNTH_CPU_BLOCK_CACHE_MB=%s is not a number of MiB; using 512\n", v);
    return std::size_t{512} << 20;
  }
  return static_cast<std::size_t>(mb) << 20;
}

class CPUBlockCache final : public c10::Allocator {
 public:
  explicit CPUBlockCache(std::size_t limit) : limit_(limit) {}

  c10::DataPtr allocate(std::size_t n) override {
    if (n < kMinCachedBlock) return c10::GetDefaultCPUAllocator()->allocate(n);
    std::size_t size = (n + kPage - 1) / kPage * kPage;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The smallest idle block that fits without wasting more than a quarter of it (the
      // most recently freed of equal ones: its pages are the likeliest to be warm).
      auto best = idle_.end();
      for (auto it = idle_.begin(); it != idle_.end(); ++it)
        if (it->size >= size && it->size - size <= it->size / 4 && (best == idle_.end() || it->size <= best->size))
          best = it;
      if (best != idle_.end()) {
        p = best->ptr;
        size = best->size;
        idle_bytes_ -= size;
        idle_.erase(best);
        ++hits_;
      }
      if (!p) ++misses_;
    }
    if (!p) p = c10::alloc_cpu(size);  // throws c10::Error when out of memory
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = size;
    }
    return {p, p, &CPUBlockCache::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CPUBlockCache::deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void give_back(void* p) {
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      const std::size_t size = it == live_.end() ? 0 : it->second;
      if (it != live_.end()) live_.erase(it);
      if (size == 0 || size > limit_) {
        to_free.push_back(p);
      } else {
        idle_.push_back({p, size});
        idle_bytes_ += size;
        take_idle_over(limit_, to_free);
      }
    }
    for (void* q : to_free) c10::free_cpu(q);
  }

  // Frees idle blocks until at most `bound` bytes stay idle; with `new_limit`, it becomes the
  // bound from now on.
  void trim(std::size_t bound, std::optional<std::size_t> new_limit = std::nullopt) {
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (new_limit) limit_ = *new_limit;
      take_idle_over(bound, to_free);
    }
    for (void* q : to_free) c10::free_cpu(q);
  }

  CPUBlockCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {idle_bytes_, idle_.size(), hits_, misses_, active ? limit_ : 0, active};
  }

  static void deleter(void* p);
  bool active = false;  // installed as libtorch's CPU allocator

 private:
  struct Block {
    void* ptr;
    std::size_t size;
  };
  // With mu_ held: the least recently freed idle blocks past `bound` bytes move to `out`.
  void take_idle_over(std::size_t bound, std::vector<void*>& out) {
    while (idle_bytes_ > bound) {
      out.push_back(idle_.front().ptr);
      idle_bytes_ -= idle_.front().size;
      idle_.pop_front();
    }
  }
  std::mutex mu_;
  std::size_t limit_;
  std::deque<Block> idle_;  // in the order they were freed
  std::size_t idle_bytes_ = 0, hits_ = 0, misses_ = 0;
  std::unordered_map<void*, std::size_t> live_;  // large blocks in use -> their size
};

// Never destroyed: tensors may outlive static destruction.
CPUBlockCache* instance() {
  static CPUBlockCache* cache = [] {
    const std::size_t limit = kSanitizerBuild ? 0 : limit_from_env();
    auto* c = new CPUBlockCache(limit);
    if (limit > 0) {
      c10::SetCPUAllocator(c, /*priority=*/1);
      c->active = true;
    }
    return c;
  }();
  return cache;
}

void CPUBlockCache::deleter(void* p) { instance()->give_back(p); }

// Installed when the library loads, before any model allocates.
[[maybe_unused]] const bool installed = (instance(), true);

}  // namespace

void release_cpu_block_cache() { instance()->trim(0); }

CPUBlockCacheStats cpu_block_cache_stats() { return instance()->stats(); }

void set_cpu_block_cache_limit(std::size_t bytes) { instance()->trim(bytes, bytes); }

}  // namespace diffsynth
