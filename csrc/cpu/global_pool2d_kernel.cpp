// global_avg_pool2d and global_max_pool2d on CPU: one reduction over H×W per
// plane, and their backwards (a broadcast, and a write at the argmax).
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

constexpr int64_t kLanes = 256;  // channels reduced together in NHWC

// NHWC: reduces a block of channels of one batch element at once, scanning the
// plane in the same order as the scalar path, so both layouts agree bit for bit.
template <typename scalar_t, bool kMax>
void reduce_nhwc(const scalar_t* x, scalar_t* y, int64_t* idx, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  const int64_t blocks = (g.C + kLanes - 1) / kLanes;
  at::parallel_for(0, g.N * blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t acc[kLanes];
    int64_t arg[kLanes];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks;
      const int64_t c0 = (t % blocks) * kLanes;
      const int64_t cb = std::min(kLanes, g.C - c0);
      const scalar_t* xn = x + n * HW * g.C + c0;
      for (int64_t j = 0; j < cb; ++j) {
        acc[j] = kMax ? lowest_value<acc_t>() : acc_t(0);
        arg[j] = 0;
      }
      for (int64_t i = 0; i < HW; ++i) {
        const scalar_t* src = xn + i * g.C;
        for (int64_t j = 0; j < cb; ++j) {
          const acc_t v = static_cast<acc_t>(src[j]);
          if (kMax) {
            const bool take = max_pool_takes(v, acc[j]);
            acc[j] = take ? v : acc[j];
            arg[j] = take ? i : arg[j];
          } else {
            acc[j] += v;
          }
        }
      }
      for (int64_t j = 0; j < cb; ++j) {
        y[n * g.C + c0 + j] = static_cast<scalar_t>(kMax ? acc[j] : acc[j] / static_cast<acc_t>(HW));
        if (kMax) idx[n * g.C + c0 + j] = arg[j];
      }
    }
  });
}

template <typename scalar_t, bool kMax>
void reduce_nchw(const scalar_t* x, scalar_t* y, int64_t* idx, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  const int64_t grain = std::max<int64_t>(1, 32768 / HW);
  at::parallel_for(0, g.N * g.C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (kMax) {
        acc_t best;
        global_max_output<scalar_t, acc_t>(x + p * HW, 1, HW, best, idx[p]);
        y[p] = static_cast<scalar_t>(best);
      } else {
        y[p] = static_cast<scalar_t>(global_avg_output<scalar_t, acc_t>(x + p * HW, 1, HW));
      }
    }
  });
}

template <bool kMax>
std::tuple<at::Tensor, at::Tensor> global_pool2d_cpu(const at::Tensor& input) {
  const char* op = kMax ? "global_max_pool2d" : "global_avg_pool2d";
  const Pool2dGeom geom = check_global_pool2d(input, op);
  return run_pool2d(input, geom, kMax, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                                           const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "global_pool2d", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = out.mutable_data_ptr<scalar_t>();
      int64_t* ip = kMax ? indices.mutable_data_ptr<int64_t>() : nullptr;
      cl ? reduce_nhwc<scalar_t, kMax>(xp, yp, ip, g) : reduce_nchw<scalar_t, kMax>(xp, yp, ip, g);
    });
  });
}

at::Tensor global_avg_pool2d_cpu(const at::Tensor& input) { return std::get<0>(global_pool2d_cpu<false>(input)); }

std::tuple<at::Tensor, at::Tensor> global_max_pool2d_cpu(const at::Tensor& input) {
  return global_pool2d_cpu<true>(input);
}

// grad_input[n, c, h, w] from the single gradient of plane (n, c): divided by
// H*W (avg) or routed to the argmax (max).
template <bool kMax>
at::Tensor global_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                      at::IntArrayRef input_size) {
  const char* op = kMax ? "global_max_pool2d" : "global_avg_pool2d";
  const Pool2dGeom geom = check_pool2d_backward(grad_output, indices, input_size, op, [&](const at::Tensor& probe) {
    return check_global_pool2d(probe, op);
  });
  return run_pool2d_backward(grad_output, indices, input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor& idx, const at::Tensor& gin,
                                 const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "global_pool2d_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* gp = gout.const_data_ptr<scalar_t>();
      const int64_t* ip = kMax ? idx.const_data_ptr<int64_t>() : nullptr;
      scalar_t* dst = gin.mutable_data_ptr<scalar_t>();
      const int64_t HW = g.H * g.W;
      for_each_element(g.N, g.C, g.H, g.W, cl, 16384, [&](int64_t n, int64_t c, int64_t h, int64_t w, int64_t i) {
        const int64_t p = n * g.C + c;
        if (kMax) {
          dst[i] = ip[p] == h * g.W + w ? gp[p] : scalar_t(0);
        } else {
          dst[i] = static_cast<scalar_t>(static_cast<acc_t>(gp[p]) / static_cast<acc_t>(HW));
        }
      });
    });
  });
}

at::Tensor global_avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  return global_pool2d_backward_cpu<false>(grad_output, at::Tensor(), input_size);
}

at::Tensor global_max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                          at::IntArrayRef input_size) {
  return global_pool2d_backward_cpu<true>(grad_output, indices, input_size);
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CPU, m) {
  m.impl("global_avg_pool2d", &poolops::global_avg_pool2d_cpu);
  m.impl("global_max_pool2d", &poolops::global_max_pool2d_cpu);
  m.impl("_global_avg_pool2d_backward", &poolops::global_avg_pool2d_backward_cpu);
  m.impl("_global_max_pool2d_backward", &poolops::global_max_pool2d_backward_cpu);
}
