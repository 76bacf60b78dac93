// Host side of conv2d shared by the CPU and CUDA backends: ATen's argument
// checks and messages, the choice of layout and algorithm, and the dense path
// (im2col columns times the weight through a GEMM). Each backend supplies its
// column and depthwise kernels in a ConvKernels table.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "conv_math.h"

namespace poolops {

struct ConvKernels {
  // Columns of image n of x (dense 4-D in the chosen layout); cols is that
  // image's column matrix (see col_row in conv_math.h).
  void (*im2col)(const at::Tensor& x, const at::Tensor& cols, int64_t n, const Conv2dGeom& g, bool channels_last);
  // Image n of grad_input (overwritten) from that image's column gradients.
  void (*col2im)(const at::Tensor& cols, const at::Tensor& grad_input, int64_t n, const Conv2dGeom& g,
                 bool channels_last);
  // Depthwise kernels on dense 4-D tensors in the chosen layout; bias may be undefined.
  void (*depthwise_forward)(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& out, const Conv2dGeom& g, bool channels_last);
  void (*depthwise_backward_input)(const at::Tensor& grad_output, const at::Tensor& weight,
                                   const at::Tensor& grad_input, const Conv2dGeom& g, bool channels_last);
  // grad_weight is a contiguous (OC, 1, kh, kw) tensor to overwrite.
  void (*depthwise_backward_weight)(const at::Tensor& grad_output, const at::Tensor& x,
                                    const at::Tensor& grad_weight, const Conv2dGeom& g, bool channels_last);
  // Optional (null where absent): a dense conv without columns, on dense
  // 4-D tensors in the chosen layout, returning false where it does not apply.
  bool (*dense_forward)(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& out, const Conv2dGeom& g, bool channels_last);
  bool (*dense_backward_input)(const at::Tensor& grad_output, const at::Tensor& weight,
                               const at::Tensor& grad_input, const Conv2dGeom& g, bool channels_last);
  // grad_weight is a contiguous (OC, C, kh, kw) tensor to overwrite; gout and x are channels-last.
  bool (*dense_backward_weight)(const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& grad_weight,
                                const Conv2dGeom& g);
  // Optional: a channels-last copy of an NCHW tensor, for the weight
  // gradient to take the channels-last path (one GEMM per run of images).
  at::Tensor (*channels_last_copy)(const at::Tensor& t);
  // Spread the images of the dense path over threads (CPU), each with a
  // single-threaded GEMM, instead of running them one after another.
  bool parallel_images;
};

// Validates a conv2d call on a 4-D input, in ATen's order and with its messages.
Conv2dGeom check_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// Depthwise: one input channel per group (OC a multiple of C).
inline bool is_depthwise(const Conv2dGeom& g) { return g.groups > 1 && g.groups == g.C; }

at::Tensor run_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      const ConvKernels& k);

at::Tensor run_conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups, const ConvKernels& k);

at::Tensor run_conv2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                      at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups, const ConvKernels& k);

}  // namespace poolops
