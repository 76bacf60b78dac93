// Channels-last dense conv2d on CPU through the indirect GEMM (no im2col
// columns). Each returns false, touching nothing, where it does not apply
// (groups > 1, 1x1 stride-1 unpadded, a dtype other than float32/bfloat16,
// no AVX-512, POOLOPS_GEMM=0): the caller then takes the im2col path.
#pragma once

#include <ATen/core/Tensor.h>

#include "../conv_math.h"

namespace poolops {

// x, out: channels-last; weight any layout; bias (OC) may be undefined.
bool dense_forward_nhwc(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                        const Conv2dGeom& g);

// gout, gin (overwritten): channels-last.
bool dense_backward_input_nhwc(const at::Tensor& gout, const at::Tensor& weight, const at::Tensor& gin,
                               const Conv2dGeom& g);

}  // namespace poolops
