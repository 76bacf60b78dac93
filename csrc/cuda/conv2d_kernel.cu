// conv2d on CUDA. Dense convolutions: im2col kernel, then cuBLAS through at::mm
// (conv_args.cpp), and a col2im that gathers per input element. Depthwise:
// direct kernels, one thread per output (forward) or input element (input
// gradient), and one block per weight element reducing in a fixed order
// (weight gradient). No atomics anywhere: every result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "../conv_args.h"
#include "cuda_utils.cuh"

namespace poolops {
namespace {

template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ cols, Conv2dGeom g,
                              bool channels_last) {
  const int64_t K = g.C * g.kh * g.kw;
  const int64_t total = K * g.ohw();
  POOLOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t k, pix, c, i, j;
    if (channels_last) {
      pix = idx / K;
      k = idx % K;
      const int64_t cgi = k % g.cg();
      const int64_t tap = (k / g.cg()) % g.taps();
      c = (k / (g.cg() * g.taps())) * g.cg() + cgi;
      i = tap / g.kw;
      j = tap % g.kw;
    } else {
      k = idx / g.ohw();
      pix = idx % g.ohw();
      c = k / g.taps();
      i = (k / g.kw) % g.kh;
      j = k % g.kw;
    }
    const int64_t h = conv_source(pix / g.OW, i, g.sh, g.ph, g.dh);
    const int64_t w = conv_source(pix % g.OW, j, g.sw, g.pw, g.dw);
    scalar_t v = scalar_t(0);
    if (h >= 0 && h < g.H && w >= 0 && w < g.W) {
      v = channels_last ? x[(h * g.W + w) * g.C + c] : x[(c * g.H + h) * g.W + w];
    }
    cols[idx] = v;
  }
}

template <typename scalar_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ cols, scalar_t* __restrict__ gin, Conv2dGeom g,
                              bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = g.C * g.H * g.W;
  POOLOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, c, h, w;
    decode_nchw(idx, g.C, g.H, g.W, channels_last, n, c, h, w);
    gin[idx] = static_cast<scalar_t>(col2im_gather<scalar_t, acc_t>(cols, g, c, h, w, channels_last));
  }
}

template <typename scalar_t>
__global__ void depthwise_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ wt,
                                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, Conv2dGeom g,
                                         bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 si = strides_for(g.C, g.H, g.W, channels_last);
  const int64_t m = g.OC / g.C;
  const int64_t total = g.N * g.OC * g.ohw();
  POOLOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, oc, oh, ow;
    decode_nchw(idx, g.OC, g.OH, g.OW, channels_last, n, oc, oh, ow);
    acc_t v = depthwise_output<scalar_t, acc_t>(x + n * si.n + (oc / m) * si.c, si.h, si.w, wt + oc * g.taps(), g,
                                                oh, ow);
    if (bias != nullptr) v += static_cast<acc_t>(bias[oc]);
    y[idx] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
__global__ void depthwise_backward_input_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ wt,
                                                scalar_t* __restrict__ gin, Conv2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides4 so = strides_for(g.OC, g.OH, g.OW, channels_last);
  const int64_t m = g.OC / g.C;
  const int64_t total = g.N * g.C * g.H * g.W;
  POOLOPS_GRID_STRIDE_LOOP(idx, total) {
    int64_t n, c, h, w;
    decode_nchw(idx, g.C, g.H, g.W, channels_last, n, c, h, w);
    gin[idx] = static_cast<scalar_t>(depthwise_input_grad<scalar_t, acc_t>(
        gout + n * so.n + c * m * so.c, so.c, so.h, so.w, wt + c * m * g.taps(), g, h, w));
  }
}

// One block per weight element (oc, i, j): each thread sums a fixed subset of
// the (n, oh, ow) positions, then a shared-memory tree adds the partial sums.
template <typename scalar_t>
__global__ void depthwise_backward_weight_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                                 scalar_t* __restrict__ gw, Conv2dGeom g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const Strides4 si = strides_for(g.C, g.H, g.W, channels_last);
  const Strides4 so = strides_for(g.OC, g.OH, g.OW, channels_last);
  const int64_t m = g.OC / g.C;
  const int64_t e = blockIdx.x;
  const int64_t oc = e / g.taps();
  const int64_t i = (e % g.taps()) / g.kw;
  const int64_t j = e % g.kw;
  const Range rh = conv_tap_outputs(i, g.H, g.OH, g.sh, g.ph, g.dh);
  const Range rw = conv_tap_outputs(j, g.W, g.OW, g.sw, g.pw, g.dw);
  const int64_t rows = rh.end - rh.begin, cols = rw.end - rw.begin;
  const int64_t total = g.N * rows * cols;
  acc_t sum = acc_t(0);
  for (int64_t t = threadIdx.x; t < total; t += blockDim.x) {
    const int64_t ow = rw.begin + t % cols;
    const int64_t oh = rh.begin + (t / cols) % rows;
    const int64_t n = t / (cols * rows);
    const int64_t h = conv_source(oh, i, g.sh, g.ph, g.dh);
    const int64_t w = conv_source(ow, j, g.sw, g.pw, g.dw);
    sum += static_cast<acc_t>(gout[n * so.n + oc * so.c + oh * so.h + ow * so.w]) *
           static_cast<acc_t>(x[n * si.n + (oc / m) * si.c + h * si.h + w * si.w]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[e] = static_cast<scalar_t>(partial[0]);
}

void im2col(const at::Tensor& x, const at::Tensor& cols, int64_t n, const Conv2dGeom& g, bool channels_last) {
  if (cols.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_im2col", [&] {
    im2col_kernel<scalar_t><<<grid_for(cols.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>() + n * g.C * g.H * g.W, cols.mutable_data_ptr<scalar_t>(), g, channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void col2im(const at::Tensor& cols, const at::Tensor& grad_input, int64_t n, const Conv2dGeom& g,
            bool channels_last) {
  const int64_t count = g.C * g.H * g.W;
  if (count == 0) return;
  const c10::cuda::CUDAGuard guard(cols.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cols.scalar_type(), "conv2d_col2im", [&] {
    col2im_kernel<scalar_t><<<grid_for(count), kThreads, 0, stream>>>(
        cols.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>() + n * count, g, channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void depthwise_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                       const Conv2dGeom& g, bool channels_last) {
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_depthwise", [&] {
    depthwise_forward_kernel<scalar_t><<<grid_for(out.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), g,
        channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void depthwise_backward_input(const at::Tensor& gout, const at::Tensor& weight, const at::Tensor& gin,
                              const Conv2dGeom& g, bool channels_last) {
  if (gin.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(gout.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "conv2d_depthwise_backward_input", [&] {
    depthwise_backward_input_kernel<scalar_t><<<grid_for(gin.numel()), kThreads, 0, stream>>>(
        gout.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g,
        channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void depthwise_backward_weight(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& gw, const Conv2dGeom& g,
                               bool channels_last) {
  if (gw.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(gout.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "conv2d_depthwise_backward_weight", [&] {
    depthwise_backward_weight_kernel<scalar_t><<<static_cast<unsigned int>(gw.numel()), kThreads, 0, stream>>>(
        gout.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), g,
        channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const ConvKernels kCudaKernels{&im2col,
                               &col2im,
                               &depthwise_forward,
                               &depthwise_backward_input,
                               &depthwise_backward_weight,
                               /*dense_forward=*/nullptr,
                               /*dense_backward_input=*/nullptr,
                               /*dense_backward_weight=*/nullptr,
                               /*channels_last_copy=*/nullptr,
                               /*parallel_images=*/false};

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(input.device());
  return run_conv2d(input, weight, bias, stride, padding, dilation, groups, kCudaKernels);
}

at::Tensor conv2d_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                      at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  return run_conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups, kCudaKernels);
}

at::Tensor conv2d_backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                       at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  return run_conv2d_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups, kCudaKernels);
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CUDA, m) {
  m.impl("conv2d", &poolops::conv2d_cuda);
  m.impl("_conv2d_backward_input", &poolops::conv2d_backward_input_cuda);
  m.impl("_conv2d_backward_weight", &poolops::conv2d_backward_weight_cuda);
}
