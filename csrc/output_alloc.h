// Output allocation shared by every op.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

namespace poolops {

// at::empty, except that a CPU output of 4 MiB or more comes from a small
// cache of freed large buffers. A fresh buffer above glibc's mmap threshold
// (32 MiB at most) costs a page fault per 4 KiB on first write, which takes
// longer than the kernel that writes it; a training loop or a benchmark frees
// and asks again for the same sizes, and a cached buffer is already mapped.
// New large buffers are 2 MiB aligned and hinted for transparent huge pages.
//   POOLOPS_CPU_CACHE_MB  bytes kept for reuse (default 256; 0: no cache)
//   POOLOPS_HUGEPAGES=0   no huge-page hint
at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options);

// Frees the cached buffers; returns the bytes freed.
int64_t empty_cpu_cache();

}  // namespace poolops
