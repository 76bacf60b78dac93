// global_avg_pool2d and global_max_pool2d on CUDA: one thread reduces one
// plane (forward); one thread per input element for the backward.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../pool_args.h"
#include "cuda_utils.cuh"

namespace poolops {
namespace {

template <typename scalar_t, bool kMax>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t* __restrict__ idx,
                               Pool2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = g.H * g.W;
  POOLOPS_GRID_STRIDE_LOOP(p, g.N * g.C) {
    // Output p is plane (n, c) in either layout, since OH = OW = 1.
    const scalar_t* plane = channels_last ? x + (p / g.C) * HW * g.C + p % g.C : x + p * HW;
    const int64_t step = channels_last ? g.C : 1;
    if (kMax) {
      acc_t best;
      int64_t arg;
      global_max_output<scalar_t, acc_t>(plane, step, HW, best, arg);
      y[p] = static_cast<scalar_t>(best);
      idx[p] = arg;
    } else {
      y[p] = static_cast<scalar_t>(global_avg_output<scalar_t, acc_t>(plane, step, HW));
    }
  }
}

template <typename scalar_t, bool kMax>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, const int64_t* __restrict__ idx,
                                scalar_t* __restrict__ gin, Pool2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  POOLOPS_GRID_STRIDE_LOOP(i, g.N * g.C * g.H * g.W) {
    int64_t n, c, h, w;
    decode_nchw(i, g.C, g.H, g.W, channels_last, n, c, h, w);
    const int64_t p = n * g.C + c;
    if (kMax) {
      gin[i] = idx[p] == h * g.W + w ? gout[p] : scalar_t(0);
    } else {
      gin[i] = static_cast<scalar_t>(static_cast<acc_t>(gout[p]) / static_cast<acc_t>(g.H * g.W));
    }
  }
}

template <bool kMax>
std::tuple<at::Tensor, at::Tensor> global_pool2d_cuda(const at::Tensor& input) {
  const Pool2dGeom geom = check_global_pool2d(input, kMax ? "global_max_pool2d" : "global_avg_pool2d");
  return run_pool2d(input, geom, kMax, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                                           const Pool2dGeom& g, bool cl) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "global_pool2d", [&] {
      forward_kernel<scalar_t, kMax><<<grid_for(out.numel()), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          kMax ? indices.mutable_data_ptr<int64_t>() : nullptr, g, cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

template <bool kMax>
at::Tensor global_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                       at::IntArrayRef input_size) {
  const char* op = kMax ? "global_max_pool2d" : "global_avg_pool2d";
  const Pool2dGeom geom = check_pool2d_backward(grad_output, indices, input_size, op, [&](const at::Tensor& probe) {
    return check_global_pool2d(probe, op);
  });
  return run_pool2d_backward(grad_output, indices, input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor& idx, const at::Tensor& gin,
                                 const Pool2dGeom& g, bool cl) {
    const c10::cuda::CUDAGuard guard(gout.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "global_pool2d_backward", [&] {
      backward_kernel<scalar_t, kMax><<<grid_for(gin.numel()), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), kMax ? idx.const_data_ptr<int64_t>() : nullptr,
          gin.mutable_data_ptr<scalar_t>(), g, cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor global_avg_pool2d_cuda(const at::Tensor& input) { return std::get<0>(global_pool2d_cuda<false>(input)); }

at::Tensor global_avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  return global_pool2d_backward_cuda<false>(grad_output, at::Tensor(), input_size);
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CUDA, m) {
  m.impl("global_avg_pool2d", &poolops::global_avg_pool2d_cuda);
  m.impl("global_max_pool2d", &poolops::global_pool2d_cuda<true>);
  m.impl("_global_avg_pool2d_backward", &poolops::global_avg_pool2d_backward_cuda);
  m.impl("_global_max_pool2d_backward", &poolops::global_pool2d_backward_cuda<true>);
}
