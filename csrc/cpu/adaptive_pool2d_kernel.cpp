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
#include "vec8.h"

namespace poolops {
namespace {

// The windows of every output row and column, and the average's divisors
// (the window height and width, divided by in turn as ATen does).
template <typename acc_t>
struct AdaptiveWindows {
  std::vector<Range> rows, cols;
  std::vector<ExactDiv<acc_t>> kh, kw;
  explicit AdaptiveWindows(const Pool2dGeom& g) : rows(g.OH), cols(g.OW), kh(g.OH), kw(g.OW) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      rows[oh] = adaptive_window(oh, g.H, g.OH);
      kh[oh] = ExactDiv<acc_t>(static_cast<acc_t>(rows[oh].end - rows[oh].begin));
    }
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      cols[ow] = adaptive_window(ow, g.W, g.OW);
      kw[ow] = ExactDiv<acc_t>(static_cast<acc_t>(cols[ow].end - cols[ow].begin));
    }
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
  at::parallel_for(0, g.N * g.C * g.OH, grain,
                   [&](int64_t begin, int64_t end) { nchw_output_rows(x, begin, end, g, row_fn); });
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
  const AdaptiveWindows<acc_t> win(g);
  if (channels_last) {
    const int64_t ahead = prefetch_ahead(std::max<int64_t>(1, g.W / g.OW) * g.C, sizeof(scalar_t));
    for_each_output_pixel(x, g, [&](const scalar_t* xn, int64_t oh, int64_t ow, int64_t p) {
      const ExactDiv<acc_t> kh = win.kh[oh], kw = win.kw[ow];
      nhwc_window_sum(xn, g.W, g.C, g.C, win.rows[oh], win.cols[ow], y + p * g.C,
                      [&](auto sum) { return kw(kh(sum)); }, ahead);
    });
    return;
  }
  if constexpr (vec8::kSupported<scalar_t>) {
    if (g.H * g.W <= kPlaneGroupMaxHW) {
      const int64_t OHW = g.OH * g.OW;
      plane_groups(x, g.N * g.C, g.H * g.W, OHW, g.H * g.W, [&](const float* block, int64_t p0, int64_t lanes,
                                                                vec8::f32x8* v, vec8::i32x8*) {
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const vec8::f32x8 sum = block_window_sum(block, g.W, win.rows[oh], win.cols[ow]);
            v[oh * g.OW + ow] = vec8::divide(vec8::divide(sum, win.kh[oh]), win.kw[ow]);
          }
        }
        store_plane_group(v, OHW, lanes, y + p0 * OHW);
      });
      return;
    }
  }
  for_each_output_row(x, g, [&](const scalar_t* plane, int64_t oh, int64_t r) {
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const acc_t sum = window_sum<scalar_t, acc_t>(plane, g.W, 1, win.rows[oh], win.cols[ow]);
      y[r * g.OW + ow] = static_cast<scalar_t>(win.kw[ow](win.kh[oh](sum)));
    }
  });
}

// One tap of n outputs whose inputs lie `step` apart (kStep > 0 fixes it),
// branch-free so that it vectorises.
template <int kStep, typename scalar_t, typename acc_t, typename index_t>
inline void strided_max_tap(const scalar_t* src, int64_t step, int64_t n, acc_t* best, index_t* arg, index_t pos) {
  const int64_t st = kStep > 0 ? kStep : step;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[j * st]);
    const bool take = max_pool_takes(v, best[j]);
    best[j] = take ? v : best[j];
    arg[j] = take ? static_cast<index_t>(pos + j * st) : arg[j];
  }
}

template <typename scalar_t, typename index_t>
void max_forward(const scalar_t* x, scalar_t* y, int64_t* idx, const Pool2dGeom& g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const AdaptiveWindows<acc_t> win(g);
  if (channels_last) {
    const int64_t ahead = prefetch_ahead(std::max<int64_t>(1, g.W / g.OW) * g.C, sizeof(scalar_t));
    for_each_output_pixel(x, g, [&](const scalar_t* xn, int64_t oh, int64_t ow, int64_t p) {
      nhwc_window_max<scalar_t, index_t>(xn, g.W, g.C, g.C, win.rows[oh], win.cols[ow], y + p * g.C, idx + p * g.C,
                                         ahead);
    });
    return;
  }
  if constexpr (vec8::kSupported<scalar_t> && std::is_same_v<index_t, int32_t>) {
    if (g.H * g.W <= kPlaneGroupMaxHW) {
      const int64_t OHW = g.OH * g.OW;
      plane_groups(x, g.N * g.C, g.H * g.W, OHW, g.H * g.W, [&](const float* block, int64_t p0, int64_t lanes,
                                                                vec8::f32x8* best, vec8::i32x8* arg) {
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {  // adaptive windows are never empty
            block_window_max(block, g.W, win.rows[oh], win.cols[ow], best[oh * g.OW + ow], arg[oh * g.OW + ow]);
          }
        }
        store_plane_group(best, OHW, lanes, y + p0 * OHW);
        store_plane_group(arg, OHW, lanes, idx + p0 * OHW);
      });
      return;
    }
  }
  // NCHW with equal windows along W (W % OW == 0): windows of width k at
  // stride k, swept tap by tap across the row, each output still seeing its
  // taps in row-major order. Otherwise the shared scalar scan per output.
  const int64_t k = g.W % g.OW == 0 ? g.W / g.OW : 0;
  for_each_output_row(x, g, [&](const scalar_t* plane, int64_t oh, int64_t r) {
    const Range rh = win.rows[oh];
    if (k == 0) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        acc_t best;
        max_pool_scan(plane, g.W, int64_t(1), g.W, rh, win.cols[ow], 1, 1, best, idx[r * g.OW + ow]);
        y[r * g.OW + ow] = static_cast<scalar_t>(best);
      }
      return;
    }
    acc_t best[kLanes];
    index_t arg[kLanes];
    for (int64_t c0 = 0; c0 < g.OW; c0 += kLanes) {
      const int64_t n = std::min(kLanes, g.OW - c0);
      for (int64_t j = 0; j < n; ++j) {
        best[j] = lowest_value<acc_t>();
        arg[j] = static_cast<index_t>(rh.begin * g.W + (c0 + j) * k);
      }
      for (int64_t h = rh.begin; h < rh.end; ++h) {
        for (int64_t t = 0; t < k; ++t) {
          const int64_t pos = h * g.W + c0 * k + t;
          k == 2 ? strided_max_tap<2>(plane + pos, k, n, best, arg, static_cast<index_t>(pos))
                 : strided_max_tap<0>(plane + pos, k, n, best, arg, static_cast<index_t>(pos));
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        y[r * g.OW + c0 + j] = static_cast<scalar_t>(best[j]);
        idx[r * g.OW + c0 + j] = arg[j];
      }
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
      const AdaptiveWindows<acc_t> win(g);
      window_avg_backward(gout.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g, win.rows, win.cols, cl,
                          [&](int64_t oh, int64_t ow) { return Divisor<acc_t, true>{win.kh[oh], win.kw[ow]}; });
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
      argmax_backward(gout.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), gin.mutable_data_ptr<scalar_t>(),
                      g, cl, "adaptive_max_pool2d_backward");
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
