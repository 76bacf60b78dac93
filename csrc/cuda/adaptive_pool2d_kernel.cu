// adaptive_avg_pool2d and adaptive_max_pool2d on CUDA: one thread per output
// (forward), one thread per input element gathering its gradient (backward:
// deterministic, no atomics). NCHW and NHWC.
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
  const Strides4 si = strides_for(g.C, g.H, g.W, channels_last);
  POOLOPS_GRID_STRIDE_LOOP(i, g.N * g.C * g.OH * g.OW) {
    int64_t n, c, oh, ow;
    decode_nchw(i, g.C, g.OH, g.OW, channels_last, n, c, oh, ow);
    const scalar_t* plane = x + n * si.n + c * si.c;
    if (kMax) {
      acc_t best;
      int64_t arg;
      adaptive_max_output<scalar_t, acc_t>(plane, si.h, si.w, g, oh, ow, best, arg);
      y[i] = static_cast<scalar_t>(best);
      idx[i] = arg;
    } else {
      y[i] = static_cast<scalar_t>(adaptive_avg_output<scalar_t, acc_t>(plane, si.h, si.w, g, oh, ow));
    }
  }
}

template <typename scalar_t, bool kMax>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, const int64_t* __restrict__ idx,
                                scalar_t* __restrict__ gin, Pool2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 so = strides_for(g.C, g.OH, g.OW, channels_last);
  POOLOPS_GRID_STRIDE_LOOP(i, g.N * g.C * g.H * g.W) {
    int64_t n, c, h, w;
    decode_nchw(i, g.C, g.H, g.W, channels_last, n, c, h, w);
    const int64_t plane = n * so.n + c * so.c;
    gin[i] = static_cast<scalar_t>(
        kMax ? adaptive_max_grad_gather<scalar_t, acc_t>(gout + plane, idx + plane, so.h, so.w, g, h, w)
             : adaptive_avg_grad_gather<scalar_t, acc_t>(gout + plane, so.h, so.w, g, h, w));
  }
}

template <bool kMax>
std::tuple<at::Tensor, at::Tensor> adaptive_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  const Pool2dGeom geom =
      check_adaptive_pool2d(input, output_size, kMax ? "adaptive_max_pool2d" : "adaptive_avg_pool2d");
  return run_pool2d(input, geom, kMax, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                                           const Pool2dGeom& g, bool cl) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_pool2d", [&] {
      forward_kernel<scalar_t, kMax><<<grid_for(out.numel()), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          kMax ? indices.mutable_data_ptr<int64_t>() : nullptr, g, cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

template <bool kMax>
at::Tensor adaptive_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                         at::IntArrayRef input_size) {
  const char* op = kMax ? "adaptive_max_pool2d" : "adaptive_avg_pool2d";
  TORCH_CHECK(grad_output.dim() >= 2, op, "_backward: grad_output must have at least 2 dims");
  const Pool2dGeom geom = check_pool2d_backward(grad_output, indices, input_size, op, [&](const at::Tensor& probe) {
    return check_adaptive_pool2d(probe, grad_output.sizes().slice(grad_output.dim() - 2), op);
  });
  return run_pool2d_backward(grad_output, indices, input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor& idx, const at::Tensor& gin,
                                 const Pool2dGeom& g, bool cl) {
    const c10::cuda::CUDAGuard guard(gout.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "adaptive_pool2d_backward", [&] {
      backward_kernel<scalar_t, kMax><<<grid_for(gin.numel()), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), kMax ? idx.const_data_ptr<int64_t>() : nullptr,
          gin.mutable_data_ptr<scalar_t>(), g, cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  return std::get<0>(adaptive_pool2d_cuda<false>(input, output_size));
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  return adaptive_pool2d_backward_cuda<false>(grad_output, at::Tensor(), input_size);
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CUDA, m) {
  m.impl("adaptive_avg_pool2d", &poolops::adaptive_avg_pool2d_cuda);
  m.impl("adaptive_max_pool2d", &poolops::adaptive_pool2d_cuda<true>);
  m.impl("_adaptive_avg_pool2d_backward", &poolops::adaptive_avg_pool2d_backward_cuda);
  m.impl("_adaptive_max_pool2d_backward", &poolops::adaptive_pool2d_backward_cuda<true>);
}
