// adaptive_avg_pool2d and adaptive_max_pool2d on CPU: forward and the gather
// backwards, NCHW and NHWC.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../pool_args.h"
#include "cpu_loops.h"

namespace poolops {
namespace {

constexpr int64_t kLanes = 256;  // channels accumulated together in NHWC

// Runs out_fn(plane, s_h, s_w, oh, ow, dst) for every output element, in memory order.
template <typename Fn>
void for_each_output(const Pool2dGeom& g, bool channels_last, int64_t cost, const Fn& out_fn) {
  const Strides4 si = strides_for(g.C, g.H, g.W, channels_last);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cost));
  at::parallel_for(0, g.N * g.C * g.OH * g.OW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t n, c, oh, ow;
      decode_nchw(i, g.C, g.OH, g.OW, channels_last, n, c, oh, ow);
      out_fn(n * si.n + c * si.c, si.h, si.w, oh, ow, i);
    }
  });
}

// Runs in_fn(plane_offset_in_grad_output, so_h, so_w, h, w, dst) for every input element.
template <typename Fn>
void for_each_input(const Pool2dGeom& g, bool channels_last, const Fn& in_fn) {
  const Strides4 so = strides_for(g.C, g.OH, g.OW, channels_last);
  for_each_element(g.N, g.C, g.H, g.W, channels_last, 4096, [&](int64_t n, int64_t c, int64_t h, int64_t w, int64_t i) {
    in_fn(n * so.n + c * so.c, so.h, so.w, h, w, i);
  });
}

int64_t window_cost(const Pool2dGeom& g) {
  return (g.H / std::max<int64_t>(g.OH, 1) + 2) * (g.W / std::max<int64_t>(g.OW, 1) + 2);
}

// NHWC average: all channels of an output pixel summed together, each in the
// row-major tap order of the scalar path, so both layouts agree bit for bit.
template <typename scalar_t>
void avg_forward_nhwc(const scalar_t* x, scalar_t* y, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.C * window_cost(g)));
  at::parallel_for(0, g.N * g.OH * g.OW, grain, [&](int64_t begin, int64_t end) {
    acc_t acc[kLanes];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ow = p % g.OW;
      const int64_t oh = (p / g.OW) % g.OH;
      const scalar_t* xn = x + (p / (g.OW * g.OH)) * g.H * g.W * g.C;
      const Range rh = adaptive_window(oh, g.H, g.OH);
      const Range rw = adaptive_window(ow, g.W, g.OW);
      const acc_t kh = static_cast<acc_t>(rh.end - rh.begin);
      const acc_t kw = static_cast<acc_t>(rw.end - rw.begin);
      for (int64_t c0 = 0; c0 < g.C; c0 += kLanes) {
        const int64_t n = std::min(kLanes, g.C - c0);
        std::fill(acc, acc + n, acc_t(0));
        for (int64_t h = rh.begin; h < rh.end; ++h) {
          for (int64_t w = rw.begin; w < rw.end; ++w) {
            const scalar_t* src = xn + (h * g.W + w) * g.C + c0;
            for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<acc_t>(src[j]);
          }
        }
        for (int64_t j = 0; j < n; ++j) y[p * g.C + c0 + j] = static_cast<scalar_t>(acc[j] / kh / kw);
      }
    }
  });
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const Pool2dGeom geom = check_adaptive_pool2d(input, output_size, "adaptive_avg_pool2d");
  return std::get<0>(run_pool2d(input, geom, false, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor&,
                                                        const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_avg_pool2d", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = out.mutable_data_ptr<scalar_t>();
      if (cl) return avg_forward_nhwc(xp, yp, g);
      for_each_output(g, false, window_cost(g), [&](int64_t off, int64_t s_h, int64_t s_w, int64_t oh, int64_t ow, int64_t i) {
        yp[i] = static_cast<scalar_t>(adaptive_avg_output<scalar_t, acc_t>(xp + off, s_h, s_w, g, oh, ow));
      });
    });
  }));
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const Pool2dGeom geom = check_adaptive_pool2d(input, output_size, "adaptive_max_pool2d");
  return run_pool2d(input, geom, true, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                                           const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_max_pool2d", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = out.mutable_data_ptr<scalar_t>();
      int64_t* ip = indices.mutable_data_ptr<int64_t>();
      for_each_output(g, cl, window_cost(g), [&](int64_t off, int64_t s_h, int64_t s_w, int64_t oh, int64_t ow, int64_t i) {
        acc_t best;
        adaptive_max_output<scalar_t, acc_t>(xp + off, s_h, s_w, g, oh, ow, best, ip[i]);
        yp[i] = static_cast<scalar_t>(best);
      });
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
      const scalar_t* gp = gout.const_data_ptr<scalar_t>();
      scalar_t* dst = gin.mutable_data_ptr<scalar_t>();
      for_each_input(g, cl, [&](int64_t off, int64_t so_h, int64_t so_w, int64_t h, int64_t w, int64_t i) {
        dst[i] = static_cast<scalar_t>(adaptive_avg_grad_gather<scalar_t, acc_t>(gp + off, so_h, so_w, g, h, w));
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
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* gp = gout.const_data_ptr<scalar_t>();
      const int64_t* ip = idx.const_data_ptr<int64_t>();
      scalar_t* dst = gin.mutable_data_ptr<scalar_t>();
      for_each_input(g, cl, [&](int64_t off, int64_t so_h, int64_t so_w, int64_t h, int64_t w, int64_t i) {
        dst[i] = static_cast<scalar_t>(adaptive_max_grad_gather<scalar_t, acc_t>(gp + off, ip + off, so_h, so_w, g, h, w));
      });
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
