// avg_pool2d on CPU: forward and the scatter backward, NCHW and NHWC.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../pool_args.h"
#include "cpu_loops.h"

namespace poolops {
namespace {

// One tap added to n consecutive outputs whose inputs lie `step` apart
// (kStep > 0 fixes the step so that the loop vectorises well).
template <int kStep, typename T, typename acc_t>
inline void sum_tap(const T* src, int64_t step, int64_t n, acc_t* acc) {
  const int64_t st = kStep > 0 ? kStep : step;
  for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<acc_t>(src[j * st]);
}

// NCHW: one task per output row. Outputs whose window lies inside [0, W) are
// swept tap by tap across the row, each still summing its taps in row-major
// order and then dividing, as the shared scalar path does for the others.
template <typename scalar_t>
void forward_nchw(const scalar_t* x, scalar_t* y, const Pool2dGeom& g, const AvgPoolOpts& opt) {
  using acc_t = at::opmath_type<scalar_t>;
  const Range inner = inner_columns(g);
  std::vector<AvgWindow> cols(g.OW);
  for (int64_t ow = 0; ow < g.OW; ++ow) cols[ow] = avg_col_window(ow, g, opt);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.OW * g.kh * g.kw));
  const bool phased = !std::is_same_v<scalar_t, acc_t>;  // as in max_pool2d
  at::parallel_for(0, g.N * g.C * g.OH, grain, [&](int64_t begin, int64_t end) {
    acc_t acc[kLanes];
    PhaseRow<acc_t> row(g.sw, (kLanes - 1) * g.sw + (g.kw - 1) * g.dw + 1);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oh = r % g.OH;
      const scalar_t* plane = x + (r / g.OH) * g.H * g.W;
      scalar_t* yrow = y + r * g.OW;
      const AvgWindow wh = avg_row_window(oh, g, opt);
      const auto scalar_output = [&](int64_t ow) {
        yrow[ow] = static_cast<scalar_t>(avg_pool_output<scalar_t, acc_t>(plane, g.W, 1, g, opt, oh, ow));
      };
      for (int64_t ow = 0; ow < inner.begin; ++ow) scalar_output(ow);
      for (int64_t ow = inner.end; ow < g.OW; ++ow) scalar_output(ow);
      if (wh.taps.empty()) {
        for (int64_t ow = inner.begin; ow < inner.end; ++ow) scalar_output(ow);
        continue;
      }
      for (int64_t c0 = inner.begin; c0 < inner.end; c0 += kLanes) {
        const int64_t n = std::min(kLanes, inner.end - c0);
        const int64_t w0 = c0 * g.sw - g.pw;
        std::fill(acc, acc + n, acc_t(0));
        for (int64_t h = wh.taps.begin; h < wh.taps.end; h += g.dh) {
          if (phased) row.fill(plane + h * g.W + w0, (n - 1) * g.sw + (g.kw - 1) * g.dw + 1);
          for (int64_t t = 0; t < g.kw; ++t) {
            const scalar_t* src = plane + h * g.W + w0 + t * g.dw;
            if (phased) {
              sum_tap<1>(row.at(t * g.dw), 1, n, acc);
            } else if (g.sw == 1) {
              sum_tap<1>(src, 1, n, acc);
            } else if (g.sw == 2) {
              sum_tap<2>(src, 2, n, acc);
            } else {
              sum_tap<0>(src, g.sw, n, acc);
            }
          }
        }
        for (int64_t j = 0; j < n; ++j) {
          yrow[c0 + j] = static_cast<scalar_t>(acc[j] / static_cast<acc_t>(avg_pool_divisor(wh, cols[c0 + j], opt)));
        }
      }
    }
  });
}

// The windows of every output row and column and the divisor of every output.
template <typename acc_t>
struct AvgTables {
  std::vector<Range> rows, cols;
  std::vector<ExactDiv<acc_t>> divisors;  // (OH, OW)
  AvgTables(const Pool2dGeom& g, const AvgPoolOpts& opt) : rows(g.OH), cols(g.OW), divisors(g.OH * g.OW) {
    std::vector<AvgWindow> wh(g.OH), ww(g.OW);
    for (int64_t oh = 0; oh < g.OH; ++oh) rows[oh] = (wh[oh] = avg_row_window(oh, g, opt)).taps;
    for (int64_t ow = 0; ow < g.OW; ++ow) cols[ow] = (ww[ow] = avg_col_window(ow, g, opt)).taps;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        divisors[oh * g.OW + ow] = ExactDiv<acc_t>(static_cast<acc_t>(avg_pool_divisor(wh[oh], ww[ow], opt)));
      }
    }
  }
};

// NHWC: all channels of an output pixel summed together, each in the same
// row-major tap order as the scalar path, so both layouts agree bit for bit.
template <typename scalar_t>
void forward_nhwc(const scalar_t* x, scalar_t* y, const Pool2dGeom& g, const AvgPoolOpts& opt) {
  using acc_t = at::opmath_type<scalar_t>;
  const AvgTables<acc_t> tab(g, opt);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.C * g.kh * g.kw));
  const int64_t ahead = prefetch_ahead(g.sw * g.C, sizeof(scalar_t));
  at::parallel_for(0, g.N * g.OH * g.OW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ow = p % g.OW;
      const int64_t oh = (p / g.OW) % g.OH;
      const scalar_t* xn = x + (p / (g.OW * g.OH)) * g.H * g.W * g.C;
      const Range rh = tab.rows[oh], rw = tab.cols[ow];
      if (rh.empty() || rw.empty()) {
        std::fill(y + p * g.C, y + (p + 1) * g.C, scalar_t(0));
        continue;
      }
      const ExactDiv<acc_t>& div = tab.divisors[oh * g.OW + ow];
      nhwc_window_sum(xn, g.W, g.C, g.C, rh, rw, y + p * g.C, [&](acc_t sum) { return div(sum); }, ahead, g.dh,
                      g.dw);
    }
  });
}

// Every input element sums grad / divisor of the windows holding it, the
// quotient taken once per output as ATen's CPU scatter does.
template <typename scalar_t>
void backward(const scalar_t* gout, scalar_t* gin, const Pool2dGeom& g, const AvgPoolOpts& opt, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const AvgTables<acc_t> tab(g, opt);
  window_avg_backward(gout, gin, g, tab.rows, tab.cols, channels_last, [&](int64_t oh, int64_t ow) {
    return Divisor<acc_t, false>{tab.divisors[oh * g.OW + ow], {}};
  }, g.dh, g.dw);
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override, at::IntArrayRef dilation) {
  const Pool2dGeom geom = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override, dilation);
  const AvgPoolOpts opt = avg_pool_opts(padding, count_include_pad, divisor_override);
  return std::get<0>(run_pool2d(input, geom, false, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor&,
                                                        const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool2d", [&] {
      cl ? forward_nhwc(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, opt)
         : forward_nchw(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, opt);
    });
  }));
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
                                   at::IntArrayRef dilation) {
  const Pool2dGeom geom = check_avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                                                    divisor_override, dilation);
  const AvgPoolOpts opt = avg_pool_opts(padding, count_include_pad, divisor_override);
  return run_pool2d_backward(grad_output, at::Tensor(), input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor&, const at::Tensor& gin, const Pool2dGeom& g,
                                 bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "avg_pool2d_backward", [&] {
      backward(gout.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g, opt, cl);
    });
  });
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CPU, m) {
  m.impl("avg_pool2d", &poolops::avg_pool2d_cpu);
  m.impl("_avg_pool2d_backward", &poolops::avg_pool2d_backward_cpu);
}
