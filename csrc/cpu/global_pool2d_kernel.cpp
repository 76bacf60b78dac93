// global_avg_pool2d and global_max_pool2d on CPU: one reduction over H×W per
// plane, and their backwards (a broadcast, and a write at the argmax).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <limits>

#include "../pool_args.h"
#include "cpu_loops.h"
#include "vec8.h"

namespace poolops {
namespace {

// NHWC: one task per batch element and block of channels, each channel
// scanning the plane in the same order as the NCHW path.
template <typename scalar_t, typename index_t, bool kMax>
void reduce_nhwc(const scalar_t* x, scalar_t* y, int64_t* idx, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kBlock = 64;
  const int64_t HW = g.H * g.W;
  const int64_t blocks = (g.C + kBlock - 1) / kBlock;
  // The next block's channels of the same pixel (the next image's first pixel after the last block).
  const int64_t ahead = kBlock;
  at::parallel_for(0, g.N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks;
      const int64_t c0 = (t % blocks) * kBlock;
      const int64_t cb = std::min(kBlock, g.C - c0);
      const scalar_t* xn = x + n * HW * g.C + c0;
      const int64_t o = n * g.C + c0;
      // The plane is scanned as a single row of HW pixels.
      if (kMax) {
        nhwc_window_max<scalar_t, index_t>(xn, HW, g.C, cb, Range{0, 1}, Range{0, HW}, y + o, idx + o, ahead);
      } else {
        nhwc_window_sum(xn, HW, g.C, cb, Range{0, 1}, Range{0, HW}, y + o,
                        [&](auto sum) { return sum / static_cast<acc_t>(HW); }, ahead);
      }
    }
  });
}

// Sum of a contiguous plane: kParts interleaved partial sums (which the
// compiler keeps in vector registers) combined pairwise, then the tail.
template <typename scalar_t>
at::opmath_type<scalar_t> plane_sum(const scalar_t* x, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kParts = 8;
  acc_t part[kParts] = {};
  int64_t i = 0;
  for (; i + kParts <= n; i += kParts) {
    for (int64_t j = 0; j < kParts; ++j) part[j] += static_cast<acc_t>(x[i + j]);
  }
  for (int64_t width = kParts / 2; width > 0; width /= 2) {
    for (int64_t j = 0; j < width; ++j) part[j] += part[j + width];
  }
  acc_t sum = part[0];
  for (; i < n; ++i) sum += static_cast<acc_t>(x[i]);
  return sum;
}

template <typename scalar_t, bool kMax>
void reduce_nchw(const scalar_t* x, scalar_t* y, int64_t* idx, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  if constexpr (kMax && vec8::kSupported<scalar_t>) {
    if (HW <= kPlaneGroupMaxHW) {  // eight planes at a time instead of one serial scan each (5-9x)
      plane_groups(x, g.N * g.C, HW, 1, HW, [&](const float* block, int64_t p0, int64_t lanes, vec8::f32x8* best,
                                                vec8::i32x8* arg) {
        block_window_max(block, HW, Range{0, 1}, Range{0, HW}, best[0], arg[0]);
        store_plane_group(best, 1, lanes, y + p0);
        store_plane_group(arg, 1, lanes, idx + p0);
      });
      return;
    }
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / HW);
  at::parallel_for(0, g.N * g.C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (kMax) {
        acc_t best;
        global_max_output<scalar_t, acc_t>(x + p * HW, 1, HW, best, idx[p]);
        y[p] = static_cast<scalar_t>(best);
      } else {
        y[p] = static_cast<scalar_t>(plane_sum(x + p * HW, HW) / static_cast<acc_t>(HW));
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
      if (!cl) return reduce_nchw<scalar_t, kMax>(xp, yp, ip, g);
      // Indices are tracked in 32 bits (twice the vector lanes) when the plane allows.
      if (g.H * g.W <= std::numeric_limits<int32_t>::max()) {
        reduce_nhwc<scalar_t, int32_t, kMax>(xp, yp, ip, g);
      } else {
        reduce_nhwc<scalar_t, int64_t, kMax>(xp, yp, ip, g);
      }
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
      const auto value = [&](int64_t p) {
        return kMax ? gp[p] : static_cast<scalar_t>(static_cast<acc_t>(gp[p]) / static_cast<acc_t>(HW));
      };
      if (!cl) {
        // Planes split over tasks: avg fills each plane; max zeroes the task's
        // planes at once (std::fill of a half/bfloat16 zero is a scalar loop)
        // and writes one gradient per plane at its argmax.
        at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, 32768 / HW), [&](int64_t begin, int64_t end) {
          if (kMax) std::memset(dst + begin * HW, 0, (end - begin) * HW * sizeof(scalar_t));
          for (int64_t p = begin; p < end; ++p) {
            scalar_t* plane = dst + p * HW;
            if (!kMax) std::fill(plane, plane + HW, value(p));
            if (kMax && ip[p] >= 0 && ip[p] < HW) plane[ip[p]] = gp[p];
          }
        });
        return;
      }
      // One task per image: every pixel gets the channel vector (avg), or zeros
      // with each channel's gradient written at its argmax pixel (max).
      at::parallel_for(0, g.N, std::max<int64_t>(1, 32768 / (HW * g.C)), [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          scalar_t* image = dst + n * HW * g.C;
          if (kMax) {
            std::memset(image, 0, HW * g.C * sizeof(scalar_t));
            for (int64_t c = 0; c < g.C; ++c) {
              const int64_t i = ip[n * g.C + c];
              if (i >= 0 && i < HW) image[i * g.C + c] = gp[n * g.C + c];
            }
          } else {
            for (int64_t c = 0; c < g.C; ++c) image[c] = value(n * g.C + c);
            for (int64_t i = 1; i < HW; ++i) std::copy(image, image + g.C, image + i * g.C);
          }
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
