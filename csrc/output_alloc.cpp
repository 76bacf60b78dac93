#include "output_alloc.h"

#include <ATen/ops/empty.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace poolops {
namespace {

bool hugepages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("POOLOPS_HUGEPAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

void advise_hugepages(void* data, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (nbytes < 2 * kHuge || !hugepages_enabled()) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes) & ~(kHuge - 1);
  // A hint only: where the kernel refuses it, the pages are simply small.
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) {
  at::Tensor t = at::empty(size, options);
  if (t.device().is_cpu()) advise_hugepages(t.data_ptr(), t.nbytes());
  return t;
}

}  // namespace poolops
