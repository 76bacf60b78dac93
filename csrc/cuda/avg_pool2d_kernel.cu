// avg_pool2d on CUDA: one thread per output (forward), one thread per input
// element gathering its gradient (backward, deterministic). NCHW and NHWC.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "../pool_args.h"
#include "cuda_utils.cuh"

namespace poolops {
namespace {

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Pool2dGeom g,
                               AvgPoolOpts opt, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 si = strides_for(g.C, g.H, g.W, channels_last);
  POOLOPS_GRID_STRIDE_LOOP(i, g.N * g.C * g.OH * g.OW) {
    int64_t n, c, oh, ow;
    decode_nchw(i, g.C, g.OH, g.OW, channels_last, n, c, oh, ow);
    y[i] = static_cast<scalar_t>(avg_pool_output<scalar_t, acc_t>(x + n * si.n + c * si.c, si.h, si.w, g, opt, oh, ow));
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, scalar_t* __restrict__ gin, Pool2dGeom g,
                                AvgPoolOpts opt, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 so = strides_for(g.C, g.OH, g.OW, channels_last);
  POOLOPS_GRID_STRIDE_LOOP(i, g.N * g.C * g.H * g.W) {
    int64_t n, c, h, w;
    decode_nchw(i, g.C, g.H, g.W, channels_last, n, c, h, w);
    gin[i] = static_cast<scalar_t>(
        avg_pool_grad_gather<scalar_t, acc_t>(gout + n * so.n + c * so.c, so.h, so.w, g, opt, h, w));
  }
}

at::Tensor avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override, at::IntArrayRef dilation) {
  const Pool2dGeom geom = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override, dilation);
  const AvgPoolOpts opt = avg_pool_opts(padding, count_include_pad, divisor_override);
  return std::get<0>(run_pool2d(input, geom, false, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor&,
                                                        const Pool2dGeom& g, bool cl) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool2d", [&] {
      forward_kernel<scalar_t><<<grid_for(out.numel()), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, opt, cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }));
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
                                    at::IntArrayRef dilation) {
  const Pool2dGeom geom = check_avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                                                    divisor_override, dilation);
  const AvgPoolOpts opt = avg_pool_opts(padding, count_include_pad, divisor_override);
  return run_pool2d_backward(grad_output, at::Tensor(), input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor&, const at::Tensor& gin, const Pool2dGeom& g,
                                 bool cl) {
    const c10::cuda::CUDAGuard guard(gout.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "avg_pool2d_backward", [&] {
      backward_kernel<scalar_t><<<grid_for(gin.numel()), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g, opt, cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CUDA, m) {
  m.impl("avg_pool2d", &poolops::avg_pool2d_cuda);
  m.impl("_avg_pool2d_backward", &poolops::avg_pool2d_backward_cuda);
}
