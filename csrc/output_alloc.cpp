#include "output_alloc.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace poolops {
namespace {

constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kMinCached = size_t(4) << 20;

size_t env_size(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  TORCH_CHECK(end != nullptr && *end == '\0', name, " must be a whole number, got '", v, "'");
  return static_cast<size_t>(n);
}

bool hugepages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("POOLOPS_HUGEPAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

void advise_hugepages(void* data, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // A hint only: where the kernel refuses it, the pages are simply small.
  if (hugepages_enabled()) (void)madvise(data, nbytes, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

// Large CPU buffers, 2 MiB aligned and sized in 2 MiB steps. A freed buffer
// is kept for the next request of its size while the kept ones total at most
// the cap; past it, the longest-kept go back to the system first.
class LargeBufferCache final : public c10::Allocator {
 public:
  LargeBufferCache() : cap_(env_size("POOLOPS_CPU_CACHE_MB", 256) << 20) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCached) return c10::GetCPUAllocator()->allocate(n);
    const size_t size = (n + kHuge - 1) / kHuge * kHuge;
    void* p = take(size);
    if (p == nullptr) {
      p = std::aligned_alloc(kHuge, size);
      if (p == nullptr && clear() > 0) p = std::aligned_alloc(kHuge, size);  // the kept buffers first
      TORCH_CHECK(p != nullptr, "poolops: out of CPU memory allocating ", n, " bytes");
      advise_hugepages(p, size);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    live_[p] = size;
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  int64_t clear() {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(kept_);
      kept_bytes_ = 0;
    }
    int64_t freed = 0;
    for (const Block& b : drop) {
      std::free(b.ptr);
      freed += static_cast<int64_t>(b.size);
    }
    return freed;
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  static void release(void* p);

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = kept_.size(); i-- > 0;) {  // the most recently freed first: likeliest still in cache
      if (kept_[i].size == size) {
        void* p = kept_[i].ptr;
        kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(i));
        kept_bytes_ -= size;
        return p;
      }
    }
    return nullptr;
  }

  void give_back(void* p) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(p);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "poolops: freeing a buffer it did not allocate");
      const size_t size = it->second;
      live_.erase(it);
      if (size > cap_) {
        drop.push_back(p);
      } else {
        while (kept_bytes_ + size > cap_) {
          drop.push_back(kept_.front().ptr);
          kept_bytes_ -= kept_.front().size;
          kept_.erase(kept_.begin());
        }
        kept_.push_back({p, size});
        kept_bytes_ += size;
      }
    }
    for (void* d : drop) std::free(d);
  }

  const size_t cap_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;
  std::vector<Block> kept_;  // oldest first
  size_t kept_bytes_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown.
LargeBufferCache& cache() {
  static auto* c = new LargeBufferCache();
  return *c;
}

void LargeBufferCache::release(void* p) { cache().give_back(p); }

}  // namespace

at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty(size, options);
  return at::detail::empty_generic(size, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), options.memory_format_opt());
}

int64_t empty_cpu_cache() { return cache().clear(); }

}  // namespace poolops
