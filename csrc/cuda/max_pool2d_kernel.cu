// max_pool2d on CUDA: one thread per output (forward), one thread per input
// element gathering its gradient (backward, deterministic). NCHW and NHWC.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../pool_args.h"
#include "cuda_utils.cuh"

namespace poolops {
namespace {

template <typename scalar_t, typename out_t, bool kIdx>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                               out_t* __restrict__ idx, Pool2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 si = strides_for(g.C, g.H, g.W, channels_last);
  const int64_t total = g.N * g.C * g.OH * g.OW;
  POOLOPS_GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode_nchw(i, g.C, g.OH, g.OW, channels_last, n, c, oh, ow);
    acc_t best;
    int64_t arg;
    max_pool_scan(x + n * si.n + c * si.c, si.h, si.w, g.W, max_pool_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh),
                  max_pool_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw), g.dh, g.dw, best, arg);
    y[i] = static_cast<scalar_t>(best);
    if (kIdx) idx[i] = max_pool_store<out_t>(arg, oh, ow, g);
  }
}

template <typename scalar_t, typename stored_t>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, const stored_t* __restrict__ idx,
                                scalar_t* __restrict__ gin, Pool2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 so = strides_for(g.C, g.OH, g.OW, channels_last);
  const int64_t total = g.N * g.C * g.H * g.W;
  POOLOPS_GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, h, w;
    decode_nchw(i, g.C, g.H, g.W, channels_last, n, c, h, w);
    const int64_t plane = n * so.n + c * so.c;
    gin[i] = static_cast<scalar_t>(max_pool_grad_gather<scalar_t, acc_t>(gout + plane, idx + plane, so.h, so.w, g, h, w));
  }
}

void launch_forward(const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices, const Pool2dGeom& g,
                    bool channels_last) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int grid = grid_for(out.numel());
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d", [&] {
    if (!indices.defined()) {
      forward_kernel<scalar_t, int64_t, false><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), nullptr, g, channels_last);
    } else if (indices.scalar_type() == at::kByte) {
      forward_kernel<scalar_t, uint8_t, true><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<uint8_t>(), g,
          channels_last);
    } else {
      forward_kernel<scalar_t, int64_t, true><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(), g,
          channels_last);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_backward(const at::Tensor& gout, const at::Tensor& idx, const at::Tensor& gin, const Pool2dGeom& g,
                     bool channels_last) {
  const c10::cuda::CUDAGuard guard(gout.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "max_pool2d_backward", [&] {
    if (idx.scalar_type() == at::kByte) {
      backward_kernel<scalar_t, uint8_t><<<grid_for(gin.numel()), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), idx.const_data_ptr<uint8_t>(), gin.mutable_data_ptr<scalar_t>(), g,
          channels_last);
    } else {
      backward_kernel<scalar_t, int64_t><<<grid_for(gin.numel()), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), gin.mutable_data_ptr<scalar_t>(), g,
          channels_last);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CUDA, m) {
  using Entries = poolops::MaxPool2dEntries<&poolops::launch_forward, &poolops::launch_backward>;
  m.impl("max_pool2d_with_indices", &Entries::with_indices);
  m.impl("max_pool2d", &Entries::values);
  m.impl("max_pool2d_with_taps", &Entries::with_taps);
  m.impl("_max_pool2d_backward", &Entries::backward);
}
