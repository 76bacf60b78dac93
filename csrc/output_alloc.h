// Output allocation shared by every op.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

namespace poolops {

// at::empty, and on Linux a transparent-huge-page hint for the 2 MiB-aligned
// interior of a large CPU buffer before anything touches it. A fresh buffer
// above glibc's mmap threshold (32 MiB at most) otherwise costs one page fault
// per 4 KiB on first write, which takes longer than the kernel that writes it.
// POOLOPS_HUGEPAGES=0 in the environment turns the hint off.
at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options);

}  // namespace poolops
