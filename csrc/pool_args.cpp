#include "pool_args.h"

#include "output_alloc.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <string_view>
#include <vector>

namespace poolops {
namespace {

int64_t first_or_second(at::IntArrayRef v, size_t i) { return v.size() == 1 ? v[0] : v[i]; }


int64_t checked_output_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  TORCH_CHECK(s != 0, "stride should not be zero");
  TORCH_CHECK(p >= 0, "pad must be non-negative, but got pad: ", p);
  TORCH_CHECK(p <= ((k - 1) * d + 1) / 2, "pad should be at most half of effective kernel size, but got pad=", p,
              ", kernel_size=", k, " and dilation=", d);
  return pool_output_size(in, k, s, p, d, ceil_mode);
}

// One dim of padding given as [begin, end]: any pads that leave a real element
// in the span of the first and the last window.
int64_t checked_sided_output_size(int64_t in, int64_t k, int64_t s, int64_t p_begin, int64_t p_end, int64_t d,
                                  const char* op) {
  TORCH_CHECK(s != 0, "stride should not be zero");
  const int64_t eff = (k - 1) * d + 1;
  for (const int64_t p : {p_begin, p_end}) {
    TORCH_CHECK(p >= 0, "pad must be non-negative, but got pad: ", p);
    TORCH_CHECK(p < eff, op, ": each pad must be smaller than the effective kernel size, but got pad=", p,
                ", kernel_size=", k, " and dilation=", d);
  }
  return sweep_output_size(in, eff, s, p_begin, p_end);
}

// Reads an op's kernel_size, stride, padding and dilation into g, with ATen's
// length checks; returns whether the padding is [top, bottom, left, right].
bool read_pool_params(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, bool ceil_mode, Pool2dGeom& g) {
  TORCH_CHECK(kernel_size.size() == 1 || kernel_size.size() == 2, op,
              ": kernel_size must either be a single int, or a tuple of two ints");
  TORCH_CHECK(stride.empty() || stride.size() == 1 || stride.size() == 2, op,
              ": stride must either be omitted, a single int, or a tuple of two ints");
  TORCH_CHECK(padding.size() == 1 || padding.size() == 2 || padding.size() == 4, op,
              ": padding must either be a single int, or a tuple of two ints");
  TORCH_CHECK(dilation.size() == 1 || dilation.size() == 2, op,
              ": dilation must be either a single int, or a tuple of two ints");
  const bool sided = padding.size() == 4;
  TORCH_CHECK(!sided || !ceil_mode, op, ": ceil_mode is not supported with padding [top, bottom, left, right]");
  g.kh = first_or_second(kernel_size, 0);
  g.kw = first_or_second(kernel_size, 1);
  g.sh = stride.empty() ? g.kh : first_or_second(stride, 0);
  g.sw = stride.empty() ? g.kw : first_or_second(stride, 1);
  g.ph = sided ? padding[0] : first_or_second(padding, 0);
  g.pw = sided ? padding[2] : first_or_second(padding, 1);
  g.dh = first_or_second(dilation, 0);
  g.dw = first_or_second(dilation, 1);
  return sided;
}

// Input sizes and the output size of a sliding-window pool.
void set_pool_sizes(const at::Tensor& input, at::IntArrayRef padding, bool sided, bool ceil_mode, const char* op,
                    Pool2dGeom& g) {
  g.N = input.dim() == 4 ? input.size(0) : 1;
  g.C = input.size(-3);
  g.H = input.size(-2);
  g.W = input.size(-1);
  g.OH = sided ? checked_sided_output_size(g.H, g.kh, g.sh, padding[0], padding[1], g.dh, op)
               : checked_output_size(g.H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  g.OW = sided ? checked_sided_output_size(g.W, g.kw, g.sw, padding[2], padding[3], g.dw, op)
               : checked_output_size(g.W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
}

// ATen's last two checks of a sliding-window pool.
void check_pool_output(const Pool2dGeom& g, bool sided) {
  TORCH_CHECK(sided || (g.kw / 2 >= g.pw && g.kh / 2 >= g.ph),
              "pad should be smaller than or equal to half of kernel size, but got padW = ", g.pw,
              ", padH = ", g.ph, ", kW = ", g.kw, ", kH = ", g.kh);
  TORCH_CHECK(g.OW >= 1 && g.OH >= 1, "Given input size: (", g.C, "x", g.H, "x", g.W,
              "). Calculated output size: (", g.C, "x", g.OH, "x", g.OW, "). Output size is too small");
}

}  // namespace

bool wants_channels_last(const at::Tensor& input) {
  return input.dim() == 4 && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::Tensor as_dense_4d(const at::Tensor& input, bool channels_last) {
  const at::Tensor x = input.dim() == 3 ? input.unsqueeze(0) : input;
  return x.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

at::Tensor new_pool_output(const at::Tensor& like, const Pool2dGeom& g, bool batched, bool channels_last,
                           c10::ScalarType dtype) {
  auto options = like.options().dtype(dtype);
  if (!batched) return empty_output({g.C, g.OH, g.OW}, options);
  return empty_output({g.N, g.C, g.OH, g.OW},
                   options.memory_format(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

Pool2dGeom check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  Pool2dGeom g{};
  const bool sided = read_pool_params("max_pool2d", kernel_size, stride, padding, dilation, ceil_mode, g);
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, "non-empty 3D or 4D (batch mode) tensor expected for input");
  set_pool_sizes(input, padding, sided, ceil_mode, "max_pool2d", g);
  TORCH_CHECK(g.kw > 0 && g.kh > 0, "kernel size should be greater than zero, but got kH: ", g.kh, " kW: ", g.kw);
  TORCH_CHECK(g.sw > 0 && g.sh > 0, "stride should be greater than zero, but got dH: ", g.sh, " dW: ", g.sw);
  TORCH_CHECK(g.dw > 0 && g.dh > 0, "dilation should be greater than zero, but got dilationH: ", g.dh,
              " dilationW: ", g.dw);
  TORCH_CHECK(g.C > 0 && g.H > 0 && g.W > 0,
              "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:",
              input.sizes());
  check_pool_output(g, sided);
  return g;
}

Pool2dGeom check_max_pool2d_taps(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const Pool2dGeom g = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  TORCH_CHECK(g.kh * g.kw < kNoTap + 1, "max_pool2d_with_taps: a ", g.kh, "x", g.kw,
              " window has more than 255 taps; use max_pool2d_with_indices");
  return g;
}

}  // namespace poolops

namespace poolops {

Pool2dGeom check_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, bool ceil_mode, std::optional<int64_t> divisor_override,
                            at::IntArrayRef dilation) {
  Pool2dGeom g{};
  const bool sided = read_pool_params("avg_pool2d", kernel_size, stride, padding, dilation, ceil_mode, g);
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, "divisor must be not zero");
  // ATen reads input.size(-3) before any rank check, so low ranks fail with an IndexError.
  TORCH_CHECK_INDEX(input.dim() >= 3, "Dimension out of range (expected to be in range of [", -input.dim(), ", ",
                    input.dim() - 1, "], but got -3)");
  TORCH_CHECK(g.dw > 0 && g.dh > 0, "dilation should be greater than zero, but got dilationH: ", g.dh,
              " dilationW: ", g.dw);
  set_pool_sizes(input, padding, sided, ceil_mode, "avg_pool2d", g);
  TORCH_CHECK(g.kw > 0 && g.kh > 0, "kernel size should be greater than zero, but got kH: ", g.kh, " kW: ", g.kw);
  TORCH_CHECK(g.sw > 0 && g.sh > 0, "stride should be greater than zero, but got dH: ", g.sh, " dW: ", g.sw);
  TORCH_CHECK((input.dim() == 3 || input.dim() == 4) && g.C > 0 && g.H > 0 && g.W > 0,
              "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:",
              input.sizes());
  check_pool_output(g, sided);
  return g;
}

Pool2dGeom check_avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     bool ceil_mode, std::optional<int64_t> divisor_override,
                                     at::IntArrayRef dilation) {
  return check_pool2d_backward(grad_output, at::Tensor(), input_size, "avg_pool2d", [&](const at::Tensor& probe) {
    return check_avg_pool2d(probe, kernel_size, stride, padding, ceil_mode, divisor_override, dilation);
  });
}

AvgPoolOpts avg_pool_opts(at::IntArrayRef padding, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const bool sided = padding.size() == 4;
  return {count_include_pad, divisor_override.value_or(0), sided ? padding[1] : first_or_second(padding, 0),
          sided ? padding[3] : first_or_second(padding, 1)};
}

namespace {

void check_pool_input_rank(const at::Tensor& input, const char* op, const char* sep) {
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, op, "(): Expected 3D or 4D tensor, but got", sep,
              input.sizes());
  for (int64_t d = input.dim() - 3; d < input.dim(); ++d) {
    TORCH_CHECK(input.size(d) > 0, op,
                "(): Expected input to have non-zero size for non-batch dimensions, but input has sizes ",
                input.sizes(), " with dimension ", d, " being empty");
  }
}

Pool2dGeom plane_geom(const at::Tensor& input, int64_t OH, int64_t OW) {
  Pool2dGeom g{};
  g.N = input.dim() == 4 ? input.size(0) : 1;
  g.C = input.size(-3);
  g.H = input.size(-2);
  g.W = input.size(-1);
  g.OH = OH;
  g.OW = OW;
  return g;
}

}  // namespace

Pool2dGeom check_adaptive_pool2d(const at::Tensor& input, at::IntArrayRef output_size, const char* op) {
  const bool is_max = std::string_view(op) == "adaptive_max_pool2d";
  if (is_max) {
    TORCH_CHECK(output_size.size() == 2, op, "(): internal error: output_size.size() must be 2");
  } else {
    TORCH_CHECK(output_size.size() == 2, op, ": output_size must be 2");
    TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, op,
                ": elements of output_size must be greater than or equal to 0 but received {", output_size[0], ", ",
                output_size[1], "}");
  }
  check_pool_input_rank(input, op, is_max ? ": " : " ");
  if (is_max) {
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end() - 2);
    shape.insert(shape.end(), output_size.begin(), output_size.end());
    for (int64_t s : output_size) {
      TORCH_CHECK(s >= 0, "Trying to create tensor with negative dimension ", s, ": ", at::IntArrayRef(shape));
    }
  }
  return plane_geom(input, output_size[0], output_size[1]);
}

Pool2dGeom check_global_pool2d(const at::Tensor& input, const char* op) {
  check_pool_input_rank(input, op, " ");
  return plane_geom(input, 1, 1);
}

}  // namespace poolops
