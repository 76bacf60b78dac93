// Host-side argument checks and output allocation shared by the CPU and CUDA
// kernels. Messages follow ATen's so users see the same errors.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <tuple>
#include <vector>

#include "output_alloc.h"
#include "pool_math.h"

namespace poolops {

// Validates a max_pool2d call on a 3-D or 4-D input and returns its geometry
// (N = 1 for unbatched input).
Pool2dGeom check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// check_max_pool2d, and a window of at most 255 taps (so a tap fits a byte).
Pool2dGeom check_max_pool2d_taps(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// True when the pooling output should be channels_last (like ATen's
// suggest_memory_format on a 4-D input).
bool wants_channels_last(const at::Tensor& input);

// The input viewed as 4-D and made dense in the layout the kernels read.
at::Tensor as_dense_4d(const at::Tensor& input, bool channels_last);

// An uninitialised (N, C, OH, OW) tensor in the given layout, with the batch
// dimension dropped again when the input was unbatched.
at::Tensor new_pool_output(const at::Tensor& like, const Pool2dGeom& g, bool batched, bool channels_last,
                           c10::ScalarType dtype);

// Validates an avg_pool2d call (ATen's checks and order at dilation 1).
// padding may also be [top, bottom, left, right] (each pad below the
// effective kernel size, without ceil_mode), as for max_pool2d.
Pool2dGeom check_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, bool ceil_mode, std::optional<int64_t> divisor_override,
                            at::IntArrayRef dilation);

Pool2dGeom check_avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     bool ceil_mode, std::optional<int64_t> divisor_override,
                                     at::IntArrayRef dilation);

// The divisor options of a checked avg_pool2d call.
AvgPoolOpts avg_pool_opts(at::IntArrayRef padding, bool count_include_pad, std::optional<int64_t> divisor_override);

// Validates an adaptive pool call; op is "adaptive_avg_pool2d" or "adaptive_max_pool2d".
Pool2dGeom check_adaptive_pool2d(const at::Tensor& input, at::IntArrayRef output_size, const char* op);

// Validates a global pool call (3-D or 4-D input with non-empty C, H, W); OH = OW = 1.
Pool2dGeom check_global_pool2d(const at::Tensor& input, const char* op);

// Checks a backward call of an op whose forward geometry comes from
// check(shape_probe): the grad_output (and indices, when defined) must have
// the forward's output size.
// taps_allowed: the indices may also be max_pool2d's one-byte taps (uint8).
template <typename Check>
Pool2dGeom check_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                 at::IntArrayRef input_size, const char* op, const Check& check,
                                 bool taps_allowed = false);

// The host side of every forward shared by the backends: allocation in the
// input's memory format, the early return on empty output, then
// launch(x, out, indices_or_undefined, geom, channels_last).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> run_pool2d(const at::Tensor& input, const Pool2dGeom& g, bool with_indices,
                                              const Launch& launch, c10::ScalarType index_dtype = at::kLong) {
  const bool batched = input.dim() == 4;
  const bool cl = wants_channels_last(input);
  at::Tensor out = new_pool_output(input, g, batched, cl, input.scalar_type());
  at::Tensor indices = with_indices ? new_pool_output(input, g, batched, cl, index_dtype) : at::Tensor();
  if (out.numel() > 0) launch(as_dense_4d(input, cl), out, indices, g, cl);
  return {out, indices};
}

// The host side of every gather backward: a dense grad_input in the layout of
// the indices (or of grad_output when there are none), then
// launch(grad_out, indices_or_undefined, grad_in, geom, channels_last).
template <typename Launch>
at::Tensor run_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                               at::IntArrayRef input_size, const Pool2dGeom& g, const Launch& launch) {
  const bool cl = wants_channels_last(indices.defined() ? indices : grad_output);
  const auto format = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_input = empty_output(input_size, grad_output.options().memory_format(format));
  if (grad_input.numel() > 0) {
    launch(as_dense_4d(grad_output, cl), indices.defined() ? as_dense_4d(indices, cl) : indices,
           grad_input.dim() == 3 ? grad_input.unsqueeze(0) : grad_input, g, cl);
  }
  return grad_input;
}

template <typename Check>
Pool2dGeom check_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                 at::IntArrayRef input_size, const char* op, const Check& check,
                                 bool taps_allowed) {
  TORCH_CHECK(input_size.size() == 3 || input_size.size() == 4, op,
              "_backward: input_size must have 3 or 4 elements, but got ", input_size);
  if (indices.defined()) {
    TORCH_CHECK(indices.scalar_type() == at::kLong || (taps_allowed && indices.scalar_type() == at::kByte), op,
                "_backward: indices must be int64", taps_allowed ? " (or uint8 taps)" : "", ", but got ",
                indices.scalar_type());
    TORCH_CHECK(grad_output.device() == indices.device(), op,
                "_backward: grad_output and indices must be on the same device, but got ", grad_output.device(),
                " and ", indices.device());
  }
  const Pool2dGeom g = check(at::empty(input_size, grad_output.options().device(at::kMeta)));
  std::vector<int64_t> expected = {g.C, g.OH, g.OW};
  if (input_size.size() == 4) expected.insert(expected.begin(), g.N);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, "_backward: expected grad_output of size ",
              at::IntArrayRef(expected), ", but got ", grad_output.sizes());
  TORCH_CHECK(!indices.defined() || indices.sizes() == at::IntArrayRef(expected), op,
              "_backward: expected indices of size ", at::IntArrayRef(expected), ", but got ", indices.sizes());
  return g;
}

// max_pool2d's operator entry points for one backend, from its launchers:
// forward(x, out, indices_or_undefined, geom, channels_last) and
// backward(grad_out, indices, grad_in, geom, channels_last).
template <auto kForward, auto kBackward>
struct MaxPool2dEntries {
  static std::tuple<at::Tensor, at::Tensor> with_taps(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool ceil_mode) {
    return run_pool2d(input, check_max_pool2d_taps(input, kernel_size, stride, padding, dilation, ceil_mode), true,
                      kForward, at::kByte);
  }
  static std::tuple<at::Tensor, at::Tensor> with_indices(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, bool ceil_mode) {
    return run_pool2d(input, check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode), true,
                      kForward);
  }
  static at::Tensor values(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    const Pool2dGeom g = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
    return std::get<0>(run_pool2d(input, g, false, kForward));
  }
  static at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& indices, at::IntArrayRef input_size,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode) {
    const Pool2dGeom g = check_pool2d_backward(grad_output, indices, input_size, "max_pool2d", [&](const at::Tensor& probe) {
      return check_max_pool2d(probe, kernel_size, stride, padding, dilation, ceil_mode);
    }, /*taps_allowed=*/true);
    return run_pool2d_backward(grad_output, indices, input_size, g, kBackward);
  }
};

}  // namespace poolops
