// adaptive_avg_pool2d and adaptive_max_pool2d on CPU: forwards and backwards,
// NCHW and NHWC.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../pool_args.h"
#include "cpu_loops.h"

namespace poolops {
namespace {

// The windows of every output row and column.
struct AdaptiveWindows {
  std::vector<Range> rows, cols;
  explicit AdaptiveWindows(const Pool2dGeom& g) : rows(g.OH), cols(g.OW) {
    for (int64_t oh = 0; oh < g.OH; ++oh) rows[oh] = adaptive_window(oh, g.H, g.OH);
    for (int64_t ow = 0; ow < g.OW; ++ow) cols[ow] = adaptive_window(ow, g.W, g.OW);
  }
};

int64_t window_cost(const Pool2dGeom& g) {
  return (g.H / std::max<int64_t>(g.OH, 1) + 2) * (g.W / std::max<int64_t>(g.OW, 1) + 2);
}

// Runs row_fn(plane, oh, r) for output row r (of NCHW planes, row oh of its
// plane), or pixel_fn(image, oh, ow, p) for output pixel p (of NHWC images).
template <typename scalar_t, typename RowFn>
void for_each_output_row(const scalar_t* x, const Pool2dGeom& g, const RowFn& row_fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.OW * window_cost(g)));
  at::parallel_for(0, g.N * g.C * g.OH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row_fn(x + (r / g.OH) * g.H * g.W, r % g.OH, r);
  });
}

template <typename scalar_t, typename PixelFn>
void for_each_output_pixel(const scalar_t* x, const Pool2dGeom& g, const PixelFn& pixel_fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.C * window_cost(g)));
  at::parallel_for(0, g.N * g.OH * g.OW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      pixel_fn(x + (p / (g.OW * g.OH)) * g.H * g.W * g.C, (p / g.OW) % g.OH, p % g.OW, p);
    }
  });
}

// Average: the window sum in row-major tap order, divided by kh and then by kw
// (as ATen does), in both layouts, so they agree bit for bit.
template <typename scalar_t>
void avg_forward(const scalar_t* x, scalar_t* y, const Pool2dGeom& g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const AdaptiveWindows win(g);
  if (channels_last) {
    for_each_output_pixel(x, g, [&](const scalar_t* xn, int64_t oh, int64_t ow, int64_t p) {
      const Range rh = win.rows[oh], rw = win.cols[ow];
      const acc_t kh = static_cast<acc_t>(rh.end - rh.begin), kw = static_cast<acc_t>(rw.end - rw.begin);
      nhwc_window_sum(xn, g.W, g.C, g.C, rh, rw, y + p * g.C, [&](acc_t sum) { return sum / kh / kw; });
    });
    return;
  }
  for_each_output_row(x, g, [&](const scalar_t* plane, int64_t oh, int64_t r) {
    const Range rh = win.rows[oh];
    const acc_t kh = static_cast<acc_t>(rh.end - rh.begin);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const Range rw = win.cols[ow];
      const acc_t sum = window_sum<scalar_t, acc_t>(plane, g.W, 1, rh, rw);
      y[r * g.OW + ow] = static_cast<scalar_t>(sum / kh / static_cast<acc_t>(rw.end - rw.begin));
    }
  });
}

template <typename scalar_t, typename index_t>
void max_forward(const scalar_t* x, scalar_t* y, int64_t* idx, const Pool2dGeom& g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const AdaptiveWindows win(g);
  if (channels_last) {
    for_each_output_pixel(x, g, [&](const scalar_t* xn, int64_t oh, int64_t ow, int64_t p) {
      nhwc_window_max<scalar_t, index_t>(xn, g.W, g.C, g.C, win.rows[oh], win.cols[ow], y + p * g.C, idx + p * g.C);
    });
    return;
  }
  for_each_output_row(x, g, [&](const scalar_t* plane, int64_t oh, int64_t r) {
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      acc_t best;
      max_pool_scan(plane, g.W, int64_t(1), g.W, win.rows[oh], win.cols[ow], 1, 1, best, idx[r * g.OW + ow]);
      y[r * g.OW + ow] = static_cast<scalar_t>(best);
    }
  });
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const Pool2dGeom geom = check_adaptive_pool2d(input, output_size, "adaptive_avg_pool2d");
  return std::get<0>(run_pool2d(input, geom, false, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor&,
                                                        const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_avg_pool2d", [&] {
      avg_forward(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, cl);
    });
  }));
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const Pool2dGeom geom = check_adaptive_pool2d(input, output_size, "adaptive_max_pool2d");
  return run_pool2d(input, geom, true, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                                           const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_max_pool2d", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = out.mutable_data_ptr<scalar_t>();
      int64_t* ip = indices.mutable_data_ptr<int64_t>();
      // Indices are tracked in 32 bits (twice the vector lanes) when the plane allows.
      if (g.H * g.W <= std::numeric_limits<int32_t>::max()) {
        max_forward<scalar_t, int32_t>(xp, yp, ip, g, cl);
      } else {
        max_forward<scalar_t, int64_t>(xp, yp, ip, g, cl);
      }
    });
  });
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  TORCH_CHECK(grad_output.dim() >= 2, "adaptive_avg_pool2d_backward: grad_output must have at least 2 dims");
  const Pool2dGeom geom = check_pool2d_backward(grad_output, at::Tensor(), input_size, "adaptive_avg_pool2d",
                                                [&](const at::Tensor& probe) {
    return check_adaptive_pool2d(probe, grad_output.sizes().slice(grad_output.dim() - 2), "adaptive_avg_pool2d");
  });
  return run_pool2d_backward(grad_output, at::Tensor(), input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor&, const at::Tensor& gin, const Pool2dGeom& g,
                                 bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "adaptive_avg_pool2d_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const AdaptiveWindows win(g);
      window_avg_backward(gout.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g, win.rows, win.cols, cl,
                          [&](int64_t oh, int64_t ow) {
        return Divisor<acc_t, true>{static_cast<acc_t>(win.rows[oh].end - win.rows[oh].begin),
                                    static_cast<acc_t>(win.cols[ow].end - win.cols[ow].begin)};
      });
    });
  });
}

at::Tensor adaptive_max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                            at::IntArrayRef input_size) {
  TORCH_CHECK(grad_output.dim() >= 2, "adaptive_max_pool2d_backward: grad_output must have at least 2 dims");
  const Pool2dGeom geom = check_pool2d_backward(grad_output, indices, input_size, "adaptive_max_pool2d",
                                                [&](const at::Tensor& probe) {
    return check_adaptive_pool2d(probe, grad_output.sizes().slice(grad_output.dim() - 2), "adaptive_max_pool2d");
  });
  return run_pool2d_backward(grad_output, indices, input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor& idx, const at::Tensor& gin,
                                 const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "adaptive_max_pool2d_backward", [&] {
      const AdaptiveWindows win(g);
      indexed_max_backward(gout.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                           gin.mutable_data_ptr<scalar_t>(), g, win.rows, win.cols, cl);
    });
  });
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CPU, m) {
  m.impl("adaptive_avg_pool2d", &poolops::adaptive_avg_pool2d_cpu);
  m.impl("adaptive_max_pool2d", &poolops::adaptive_max_pool2d_cpu);
  m.impl("_adaptive_avg_pool2d_backward", &poolops::adaptive_avg_pool2d_backward_cpu);
  m.impl("_adaptive_max_pool2d_backward", &poolops::adaptive_max_pool2d_backward_cpu);
}
