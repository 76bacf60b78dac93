// Dense conv2d on CPU through the indirect GEMM (no im2col columns), on
// channels-last data: NCHW tensors are transposed to and from it
// (transpose.h) where their columns would outgrow the input. Each returns
// false, touching nothing, where it does not apply (groups > 1, 1x1
// stride-1 unpadded, NCHW with smaller columns, a dtype other than
// float32/bfloat16, no AVX-512, POOLOPS_GEMM=0): the caller then takes the
// im2col path.
#pragma once

#include <ATen/core/Tensor.h>

#include "../conv_math.h"

namespace poolops {

// x, out: dense in the layout channels_last names; weight any layout; bias
// (OC) may be undefined.
bool dense_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                   const Conv2dGeom& g, bool channels_last);

// A channels-last copy of a contiguous NCHW tensor (8x8-block transposes).
at::Tensor channels_last_copy(const at::Tensor& t);

// gout, gin (overwritten): dense in the layout channels_last names.
bool dense_backward_input(const at::Tensor& gout, const at::Tensor& weight, const at::Tensor& gin,
                          const Conv2dGeom& g, bool channels_last);

// gw (OC, C, kh, kw), overwritten, from channels-last gout and x: float32,
// or bfloat16 with AVX512-BF16 (float sums rounded once), one GEMM over all
// the images whose B rows are gathered from the input pixels
// (gemm_f32_gathered_b, gemm_bf16_gathered_b).
bool dense_backward_weight(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& gw, const Conv2dGeom& g);

}  // namespace poolops
