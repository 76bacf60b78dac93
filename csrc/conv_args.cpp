#include "conv_args.h"

#include "cpu/gemm.h"
#include "output_alloc.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <array>
#include <vector>

namespace poolops {
namespace {

std::vector<int64_t> expand_param(at::IntArrayRef v, const char* name) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, "expected ", name,
              " to be a single integer value or a list of 2 values to match the convolution dimensions, but got ",
              name, "=", v);
  return v.size() == 1 ? std::vector<int64_t>{v[0], v[0]} : std::vector<int64_t>{v[0], v[1]};
}

// Padding as [top, bottom, left, right]: given so, or one int / one per dim for both sides.
std::array<int64_t, 4> expand_padding(at::IntArrayRef v) {
  if (v.size() == 4) return {v[0], v[1], v[2], v[3]};
  const auto p = expand_param(v, "padding");
  return {p[0], p[0], p[1], p[1]};
}

bool suggests_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor meta_like(at::IntArrayRef size, const at::Tensor& like, const char* what) {
  TORCH_CHECK(size.size() == 4, "conv2d backward: ", what, " must have 4 elements, but got ", size);
  return at::empty(size, like.options().device(at::kMeta));
}

void check_same_device(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c = at::Tensor()) {
  TORCH_CHECK(a.device() == b.device() && (!c.defined() || c.device() == a.device()),
              "conv2d: expected all tensors on the same device, but got ", a.device(), " and ",
              a.device() == b.device() ? c.device() : b.device());
}

void check_grad_output(const at::Tensor& grad_output, const Conv2dGeom& g) {
  const std::vector<int64_t> expected = {g.N, g.OC, g.OH, g.OW};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), "conv2d backward: expected grad_output of size ",
              at::IntArrayRef(expected), ", but got ", grad_output.sizes());
}

// Bytes of stacked columns per GEMM of the channels-last weight gradient:
// a few images per GEMM cut its calls and thread hand-offs, while the
// scratch stays small enough to be reused rather than mapped afresh (32 MiB
// runs made the ResNet 3x3 stride-2 bfloat16 backward 40% slower).
constexpr int64_t kColumnRunBytes = int64_t(4) << 20;

// out = a @ b (+ out when accumulate). float32 on a CPU with AVX-512 runs the
// project's GEMM (cpu/gemm.h), everything else at::mm, in float32 for half and bfloat16 where the CPU lacks
// AVX512-BF16.
void matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const bool narrow = out.scalar_type() == at::kHalf || out.scalar_type() == at::kBFloat16;
  if (out.is_cpu() && narrow && !(out.scalar_type() == at::kBFloat16 && avx512_bf16_enabled())) {
    // Without AVX512-BF16, at::mm's half and bfloat16 GEMMs fall back to code that ran ResNet's 1x1 stride-2 conv
    // (32 images, channels-last) in 2.4 s against float32's 41 ms. Widened, they take the float32 GEMM (41 ms)
    // and round once, as at::mm's own float sums do.
    const at::Tensor wide = accumulate ? out.to(at::kFloat) : at::empty(out.sizes(), out.options().dtype(at::kFloat));
    matmul_out(wide, a.to(at::kFloat), b.to(at::kFloat), accumulate);
    out.copy_(wide);
    return;
  }
  if (out.is_cpu() && out.scalar_type() == at::kFloat && out.stride(1) == 1 && own_gemm_enabled()) {
    gemm_f32(a.size(0), b.size(1), a.size(1), a.const_data_ptr<float>(), a.stride(0), a.stride(1),
             b.const_data_ptr<float>(), b.stride(0), b.stride(1), out.mutable_data_ptr<float>(), out.stride(0),
             accumulate);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::Tensor o = out;
    at::mm_out(o, a, b);
  }
}

// The weight as the (OC, K/groups) matrix matching the column layout.
at::Tensor weight_matrix(const at::Tensor& weight, const Conv2dGeom& g, bool channels_last) {
  if (!channels_last) return weight.contiguous().view({g.OC, g.kg()});
  return weight.permute({0, 2, 3, 1}).contiguous().view({g.OC, g.kg()});
}

// Runs body(n, cols) for every image, with cols a scratch column matrix (or,
// when the columns are the input itself, an undefined tensor).
template <typename Body>
void for_each_image(const Conv2dGeom& g, const at::TensorOptions& options, bool channels_last, bool parallel,
                    const Body& body) {
  const int64_t K = g.C * g.kh * g.kw;
  const auto scratch = [&] {
    if (columns_are_input(g)) return at::Tensor();
    return channels_last ? at::empty({g.ohw(), K}, options) : at::empty({K, g.ohw()}, options);
  };
  if (parallel && g.N > 1) {
    // The body calls ATen ops: the worker threads need this thread's dispatch
    // state (autograd excluded inside a kernel, grad mode, ...).
    const at::ThreadLocalState state;
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(state);
      const at::Tensor cols = scratch();
      for (int64_t n = begin; n < end; ++n) body(n, cols);
    });
  } else {
    const at::Tensor cols = scratch();
    for (int64_t n = 0; n < g.N; ++n) body(n, cols);
  }
}

// Image n's columns: the input itself for a 1x1/s1/p0 conv, else im2col.
at::Tensor image_columns(const at::Tensor& x, const at::Tensor& scratch, int64_t n, const Conv2dGeom& g,
                         bool channels_last, const ConvKernels& k) {
  if (!scratch.defined()) {
    return channels_last ? x.permute({0, 2, 3, 1}).reshape({g.N * g.H * g.W, g.C}).narrow(0, n * g.H * g.W, g.H * g.W)
                         : x[n].view({g.C, g.H * g.W});
  }
  k.im2col(x, scratch, n, g, channels_last);
  return scratch;
}

}  // namespace

Conv2dGeom check_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride_, at::IntArrayRef padding_, at::IntArrayRef dilation_,
                        int64_t groups) {
  TORCH_CHECK(input.dim() == 4, "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 4, "expected stride to be a single integer value or a list of ", weight.dim() - 2,
              " values to match the convolution dimensions, but got stride=", stride_);
  const auto stride = expand_param(stride_, "stride");
  const auto padding = expand_padding(padding_);
  const auto dilation = expand_param(dilation_, "dilation");
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "Input type (", input.dtype(), ") and bias type (",
                bias->dtype(), ") should be the same");
  }
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
              "negative padding is not supported");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "non-positive stride is not supported");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dilation should be greater than zero, but got ",
              at::IntArrayRef(dilation));
  TORCH_CHECK(weight.size(0) >= groups, "Given groups=", groups, ", expected weight to be at least ", groups,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(weight.size(0) % groups == 0, "Given groups=", groups, ", expected weight to be divisible by ",
              groups, " at dimension 0, but got weight of size [", weight.sizes(), "] instead");
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, "Given groups=", groups, ", weight of size ",
              weight.sizes(), ", expected input", input.sizes(), " to have ", weight.size(1) * groups,
              " channels, but got ", input.size(1), " channels instead");
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "Given weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", weight.size(0), " elements, but got bias of size ",
                bias->sizes(), " instead");
  }
  Conv2dGeom g{};
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.OC = weight.size(0);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[2];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.groups = groups;
  const int64_t eff_h = g.dh * (g.kh - 1) + 1;
  const int64_t eff_w = g.dw * (g.kw - 1) + 1;
  const int64_t padded_h = g.H + padding[0] + padding[1];
  const int64_t padded_w = g.W + padding[2] + padding[3];
  TORCH_CHECK(padded_h >= eff_h && padded_w >= eff_w, "Calculated padded input size per channel: (", padded_h,
              " x ", padded_w, "). Kernel size: (", eff_h, " x ", eff_w,
              "). Kernel size can't be greater than actual input size");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "expected scalar type ", input.scalar_type(),
              " but found ", weight.scalar_type());
  g.OH = sweep_output_size(g.H, eff_h, g.sh, padding[0], padding[1]);
  g.OW = sweep_output_size(g.W, eff_w, g.sw, padding[2], padding[3]);
  return g;
}

at::Tensor run_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias_,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      const ConvKernels& k) {
  const Conv2dGeom g = check_conv2d(input, weight, bias_, stride, padding, dilation, groups);
  const bool cl = suggests_channels_last(input) || suggests_channels_last(weight);
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  check_same_device(input, weight, bias);
  at::Tensor out = empty_output({g.N, g.OC, g.OH, g.OW}, input.options().memory_format(format_of(cl)));
  if (out.numel() == 0) return out;
  if (g.C == 0) {
    out.zero_();
    if (bias.defined()) out.add_(bias.view({1, g.OC, 1, 1}));
    return out;
  }
  const at::Tensor x = input.contiguous(format_of(cl));
  if (is_depthwise(g)) {
    k.depthwise_forward(x, weight.contiguous(), bias.defined() ? bias.contiguous() : bias, out, g, cl);
    return out;
  }
  if (k.dense_forward != nullptr && k.dense_forward(x, weight, bias, out, g, cl)) return out;
  const at::Tensor wm = weight_matrix(weight, g, cl);
  const int64_t ocg = g.ocg(), kg = g.kg();
  // NCHW: out[n] (OC, OHW) = W (OC, K) @ cols (K, OHW), per group.
  // NHWC: out[n] (OHW, OC) = cols (OHW, K) @ W^T (K, OC), per group, W^T
  // made contiguous once rather than transposed by every image's GEMM.
  const at::Tensor wmt = cl ? wm.t().contiguous() : wm;
  const at::Tensor bias_mat = !bias.defined() ? bias : cl ? bias.view({1, g.OC}) : bias.view({g.OC, 1});
  const at::Tensor out2d = cl ? out.permute({0, 2, 3, 1}).reshape({g.N * g.ohw(), g.OC}) : out.view({g.N * g.OC, g.ohw()});
  for_each_image(g, x.options(), cl, k.parallel_images, [&](int64_t n, const at::Tensor& scratch) {
    const at::Tensor cols = image_columns(x, scratch, n, g, cl, k);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      at::Tensor o = cl ? out2d.narrow(0, n * g.ohw(), g.ohw()).narrow(1, grp * ocg, ocg)
                        : out2d.narrow(0, n * g.OC + grp * ocg, ocg);
      const at::Tensor a = cl ? cols.narrow(1, grp * kg, kg) : wm.narrow(0, grp * ocg, ocg);
      const at::Tensor b = cl ? wmt.narrow(1, grp * ocg, ocg) : cols.narrow(0, grp * kg, kg);
      if (bias.defined()) {
        o.copy_(bias_mat.narrow(cl ? 1 : 0, grp * ocg, ocg));
      }
      matmul_out(o, a, b, /*accumulate=*/bias.defined());
    }
  });
  return out;
}

at::Tensor run_conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups, const ConvKernels& k) {
  const Conv2dGeom g = check_conv2d(meta_like(input_size, weight, "input_size"), weight, std::nullopt, stride,
                                    padding, dilation, groups);
  TORCH_CHECK(grad_output.scalar_type() == weight.scalar_type(), "expected scalar type ", weight.scalar_type(),
              " but found ", grad_output.scalar_type());
  check_same_device(grad_output, weight);
  check_grad_output(grad_output, g);
  const bool cl = suggests_channels_last(grad_output) || suggests_channels_last(weight);
  at::Tensor grad_input = empty_output(input_size, grad_output.options().memory_format(format_of(cl)));
  if (grad_input.numel() == 0) return grad_input;
  if (g.OC == 0 || grad_output.numel() == 0) return grad_input.zero_();
  const at::Tensor gout = grad_output.contiguous(format_of(cl));
  if (is_depthwise(g)) {
    k.depthwise_backward_input(gout, weight.contiguous(), grad_input, g, cl);
    return grad_input;
  }
  if (k.dense_backward_input != nullptr && k.dense_backward_input(gout, weight, grad_input, g, cl)) return grad_input;
  const at::Tensor wm = weight_matrix(weight, g, cl);
  const int64_t ocg = g.ocg(), kg = g.kg();
  const at::Tensor gout2d = cl ? gout.permute({0, 2, 3, 1}).reshape({g.N * g.ohw(), g.OC}) : gout.view({g.N * g.OC, g.ohw()});
  const at::Tensor gin2d = cl ? grad_input.permute({0, 2, 3, 1}).reshape({g.N * g.H * g.W, g.C})
                              : grad_input.view({g.N * g.C, g.H * g.W});
  for_each_image(g, gout.options(), cl, k.parallel_images, [&](int64_t n, const at::Tensor& scratch) {
    // Column gradients: NCHW (K, OHW) = W^T @ gout[n]; NHWC (OHW, K) = gout[n] @ W.
    const at::Tensor cols = scratch.defined() ? scratch
                            : cl ? gin2d.narrow(0, n * g.H * g.W, g.H * g.W)
                                 : gin2d.narrow(0, n * g.C, g.C);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const at::Tensor w = wm.narrow(0, grp * ocg, ocg);
      at::Tensor c = cl ? cols.narrow(1, grp * kg, kg) : cols.narrow(0, grp * kg, kg);
      if (cl) {
        matmul_out(c, gout2d.narrow(0, n * g.ohw(), g.ohw()).narrow(1, grp * ocg, ocg), w, false);
      } else {
        matmul_out(c, w.t(), gout2d.narrow(0, n * g.OC + grp * ocg, ocg), false);
      }
    }
    if (scratch.defined()) k.col2im(cols, grad_input, n, g, cl);
  });
  return grad_input;
}

at::Tensor run_conv2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                      at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups, const ConvKernels& k) {
  const Conv2dGeom g = check_conv2d(input, meta_like(weight_size, input, "weight_size"), std::nullopt, stride,
                                    padding, dilation, groups);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "expected scalar type ", input.scalar_type(),
              " but found ", grad_output.scalar_type());
  check_same_device(grad_output, input);
  check_grad_output(grad_output, g);
  if (grad_output.numel() == 0 || g.C == 0) return at::zeros(weight_size, input.options());
  bool cl = suggests_channels_last(grad_output) || suggests_channels_last(input);
  at::Tensor x = input.contiguous(format_of(cl));
  at::Tensor gout = grad_output.contiguous(format_of(cl));
  if (!cl && !is_depthwise(g) && columns_outgrow_input(g) && k.channels_last_copy != nullptr) {
    // NCHW per-image GEMMs read their columns transposed: ResNet's 3x3 stride-2 float32 weight gradient took
    // 25 ms against ATen's 10; through channels-last copies it takes the runs of images below.
    x = k.channels_last_copy(x);
    gout = k.channels_last_copy(gout);
    cl = true;
  }
  if (is_depthwise(g)) {
    at::Tensor grad_weight = at::empty(weight_size, input.options());
    k.depthwise_backward_weight(gout, x, grad_weight, g, cl);
    return grad_weight;
  }
  if (cl && k.dense_backward_weight != nullptr) {
    at::Tensor grad_weight = at::empty(weight_size, input.options());
    if (k.dense_backward_weight(gout, x, grad_weight, g)) return grad_weight;
  }
  const int64_t ocg = g.ocg(), kg = g.kg();
  const at::Tensor gout2d = cl ? gout.permute({0, 2, 3, 1}).reshape({g.N * g.ohw(), g.OC}) : gout.view({g.N * g.OC, g.ohw()});
  // Partial products (of image runs, or of single images) add up in gw;
  // half and bfloat16 ones in a float sum instead, rounded at the end rather
  // than after every part (a bfloat16 running sum over 32 images had 4.7x
  // ATen's error).
  at::Tensor gw = at::empty({g.OC, kg}, input.options());
  at::Tensor sum;
  const bool narrow_type = x.element_size() < 4;
  const auto part_done = [&](int64_t part, int64_t parts) {
    if (!narrow_type || parts == 1) return;
    if (part == 0) {
      sum = gw.to(at::kFloat);
    } else {
      sum.add_(gw);
    }
    if (part == parts - 1) gw.copy_(sum);
  };
  if (cl) {
    // Channels-last: the columns of a run of images, stacked (the input
    // itself for a 1x1/s1/p0 conv), make one GEMM per group:
    // gW (+)= gout[run]^T (OC, run * OHW) @ cols (run * OHW, K).
    const int64_t K = g.C * g.kh * g.kw;
    const bool own = !columns_are_input(g);
    const int64_t run = own ? std::clamp<int64_t>(kColumnRunBytes / (g.ohw() * K * x.element_size()), 1, g.N) : g.N;
    const at::Tensor cols = own ? at::empty({run * g.ohw(), K}, x.options())
                                : x.permute({0, 2, 3, 1}).reshape({g.N * g.ohw(), g.C});
    const int64_t parts = (g.N + run - 1) / run;
    for (int64_t part = 0; part < parts; ++part) {
      const int64_t n0 = part * run, images = std::min(run, g.N - n0);
      if (own) {
        std::vector<at::Tensor> image_cols;  // views made here: the worker threads below skip the dispatcher
        for (int64_t n = n0; n < n0 + images; ++n) image_cols.push_back(cols.narrow(0, (n - n0) * g.ohw(), g.ohw()));
        // CPU: one image per thread, one hand-off per run (gomp's waits had taken 9% of the time).
        const auto fill = [&](int64_t begin, int64_t end) {
          for (int64_t n = n0 + begin; n < n0 + end; ++n) k.im2col(x, image_cols[n - n0], n, g, cl);
        };
        k.parallel_images ? at::parallel_for(0, images, 1, fill) : fill(0, images);
      }
      const at::Tensor c = cols.narrow(0, own ? 0 : n0 * g.ohw(), images * g.ohw());
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        matmul_out(gw.narrow(0, grp * ocg, ocg),
                   gout2d.narrow(0, n0 * g.ohw(), images * g.ohw()).narrow(1, grp * ocg, ocg).t(),
                   c.narrow(1, grp * kg, kg), /*accumulate=*/!narrow_type && part > 0);
      }
      part_done(part, parts);
    }
    return gw.view({g.OC, g.kh, g.kw, g.cg()}).permute({0, 3, 1, 2}).contiguous();
  }
  // NCHW: gW (+)= gout[n] (OC, OHW) @ cols^T, one image after another (GEMMs
  // multithreaded inside), so the result does not depend on the thread count.
  for_each_image(g, x.options(), cl, false, [&](int64_t n, const at::Tensor& scratch) {
    const at::Tensor cols = image_columns(x, scratch, n, g, cl, k);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      matmul_out(gw.narrow(0, grp * ocg, ocg), gout2d.narrow(0, n * g.OC + grp * ocg, ocg),
                 cols.narrow(0, grp * kg, kg).t(), /*accumulate=*/!narrow_type && n > 0);
    }
    part_done(n, g.N);
  });
  return gw.view(weight_size);
}

}  // namespace poolops
