// Host-side argument checks and output allocation shared by the CPU and CUDA
// kernels. Messages follow ATen's so users see the same errors.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>

#include <tuple>

#include "pool_math.h"

namespace poolops {

// Validates a max_pool2d call on a 3-D or 4-D input and returns its geometry
// (N = 1 for unbatched input).
Pool2dGeom check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// Geometry for a backward call from the saved indices and the input size.
Pool2dGeom check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                     at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     bool ceil_mode);

// True when the pooling output should be channels_last (like ATen's
// suggest_memory_format on a 4-D input).
bool wants_channels_last(const at::Tensor& input);

// The input viewed as 4-D and made dense in the layout the kernels read.
at::Tensor as_dense_4d(const at::Tensor& input, bool channels_last);

// An uninitialised (N, C, OH, OW) tensor in the given layout, with the batch
// dimension dropped again when the input was unbatched.
at::Tensor new_pool_output(const at::Tensor& like, const Pool2dGeom& g, bool batched, bool channels_last,
                           c10::ScalarType dtype);

}  // namespace poolops

namespace poolops {

// The host side of max_pool2d shared by every backend: checks, allocation in
// the input's memory format, the early return on empty output, then
// launch(x, out, indices_or_undefined, geom, channels_last).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> run_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode, bool with_indices,
                                                  const Launch& launch) {
  const Pool2dGeom g = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  const bool batched = input.dim() == 4;
  const bool cl = wants_channels_last(input);
  at::Tensor out = new_pool_output(input, g, batched, cl, input.scalar_type());
  at::Tensor indices = with_indices ? new_pool_output(input, g, batched, cl, at::kLong) : at::Tensor();
  if (out.numel() > 0) launch(as_dense_4d(input, cl), out, indices, g, cl);
  return {out, indices};
}

// The host side of the max_pool2d backward: checks, a dense grad_input in the
// layout of the saved indices, then launch(grad_out, indices, grad_in, geom, cl).
template <typename Launch>
at::Tensor run_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                                   const Launch& launch) {
  const Pool2dGeom g = check_max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding,
                                                 dilation, ceil_mode);
  const bool cl = wants_channels_last(indices);
  const auto format = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(format));
  if (grad_input.numel() > 0) {
    launch(as_dense_4d(grad_output, cl), as_dense_4d(indices, cl), grad_input.dim() == 3 ? grad_input.unsqueeze(0) : grad_input, g, cl);
  }
  return grad_input;
}

}  // namespace poolops
