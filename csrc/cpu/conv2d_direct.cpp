// Dense conv2d (groups == 1) on CPU without im2col columns, on channels-last
// data (NCHW data through transposed copies): each output pixel's row of A
// is gathered through pointers to the input pixels its taps read
// (indirect_gemm.h). The backward-input pass is the same GEMM over the input
// pixels, one stride phase at a time: the pixels with h % sh == rh and
// w % sw == rw receive gradient through the same taps, so no tap is
// multiplied by structural zeros and no col2im sum is needed.
#include "conv2d_direct.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gemm.h"
#include "indirect_gemm.h"
#include "../output_alloc.h"
#include "transpose.h"

namespace poolops {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

bool applies(const Conv2dGeom& g, at::ScalarType type, int64_t K, bool channels_last) {
  return g.groups == 1 && !columns_are_input(g) && (channels_last || columns_outgrow_input(g)) &&
         indirect_gemm_supported(type, K);
}

// Positive remainder of a by s.
inline int64_t mod(int64_t a, int64_t s) { return ((a % s) + s) % s; }

// Rows m0 .. m0 + mr - 1 of the indirect GEMM, which walk a (rows x cols)
// grid of pixels per image: pixels inside `inner` (every tap in range) are
// described by inner_row(n, row, col, a, c), the others by border_row (c
// null where the caller wants only the rows of A).
template <typename T, typename Inner, typename Border>
void fill_rows(int64_t m0, int64_t mr, int64_t rows, int64_t cols, Range inner_rows, Range inner_cols, int64_t taps,
               const T** a, T** c, const Inner& inner_row, const Border& border_row) {
  int64_t n = m0 / (rows * cols), row = m0 % (rows * cols) / cols, col = m0 % cols;
  for (int64_t r = 0; r < mr; ++r, a += taps) {
    const bool inner =
        row >= inner_rows.begin && row < inner_rows.end && col >= inner_cols.begin && col < inner_cols.end;
    T** cr = c != nullptr ? c + r : nullptr;
    inner ? inner_row(n, row, col, a, cr) : border_row(n, row, col, a, cr);
    if (++col == cols) {
      col = 0;
      if (++row == rows) row = 0, ++n;
    }
  }
}

// taps(m0, mr, a): for output pixels m0 .. m0 + mr - 1 (in (n, oh, ow)
// order), the input pixels their taps read, g.taps() pointers each, pad
// where a tap lies in the padding. The forward's rows of A, and the weight
// gradient's rows of B.
template <typename T>
auto output_taps(const T* x, const Conv2dGeom& g, const T* pad) {
  // Where every tap is in range, tap t reads offset[t] elements from the window's corner.
  std::vector<int64_t> offset(g.taps());
  for (int64_t t = 0; t < g.taps(); ++t) offset[t] = (t / g.kw * g.dh * g.W + t % g.kw * g.dw) * g.C;
  const Range inner_h = conv_inner_outputs(g.H, g.OH, g.kh, g.sh, g.ph, g.dh);
  const Range inner_w = conv_inner_outputs(g.W, g.OW, g.kw, g.sw, g.pw, g.dw);
  return [x, &g, pad, offset = std::move(offset), inner_h, inner_w](int64_t m0, int64_t mr, const T** a) {
    const auto border_row = [&](int64_t n, int64_t oh, int64_t ow, const T** at, T**) {
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t h = conv_source(oh, i, g.sh, g.ph, g.dh);
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t wi = conv_source(ow, j, g.sw, g.pw, g.dw);
          const bool inside = h >= 0 && h < g.H && wi >= 0 && wi < g.W;
          at[i * g.kw + j] = inside ? x + ((n * g.H + h) * g.W + wi) * g.C : pad;
        }
      }
    };
    const int64_t taps = g.taps();
    const int64_t* off = offset.data();
    const auto inner_row = [&](int64_t n, int64_t oh, int64_t ow, const T** at, T**) {
      const int64_t h = conv_source(oh, 0, g.sh, g.ph, 1), wi = conv_source(ow, 0, g.sw, g.pw, 1);
      const T* corner = x + ((n * g.H + h) * g.W + wi) * g.C;
      for (int64_t t = 0; t < taps; ++t) at[t] = corner + off[t];
    };
    fill_rows(m0, mr, g.OH, g.OW, inner_h, inner_w, taps, a, static_cast<T**>(nullptr), inner_row, border_row);
  };
}

template <typename T>
void forward(const T* x, const T* w, const float* bias, T* y, const Conv2dGeom& g) {
  const int64_t taps = g.taps();
  std::vector<const T*> base(taps);
  for (int64_t t = 0; t < taps; ++t) base[t] = w + t;
  // B_t (C x OC): element (c, oc) = weight[oc][c][t].
  const std::vector<T> packed = pack_indirect_b(base, g.C, g.OC, taps, g.C * taps);
  const std::vector<T> zeros(g.C, T(0));
  const auto taps_of = output_taps(x, g, zeros.data());
  // Output pixel m's row of y (channels-last): m * OC on.
  indirect_gemm<T>(g.N * g.ohw(), g.OC, taps, g.C, packed.data(), bias,
                   [&](int64_t m0, int64_t mr, const T** a, T** c) {
                     taps_of(m0, mr, a);
                     for (int64_t r = 0; r < mr; ++r) c[r] = y + (m0 + r) * g.OC;
                   });
}

template <typename T>
void backward_input(const T* gout, const T* w, T* gin, const Conv2dGeom& g) {
  const std::vector<T> zeros(g.OC, T(0));
  for (int64_t rh = 0; rh < std::min(g.sh, g.H); ++rh) {
    for (int64_t rw = 0; rw < std::min(g.sw, g.W); ++rw) {
      // The taps through which the pixels of this phase are read.
      std::vector<int64_t> ti, tj;
      for (int64_t i = 0; i < g.kh; ++i) {
        if (mod(rh + g.ph - i * g.dh, g.sh) == 0) ti.push_back(i);
      }
      for (int64_t j = 0; j < g.kw; ++j) {
        if (mod(rw + g.pw - j * g.dw, g.sw) == 0) tj.push_back(j);
      }
      const int64_t hs = (g.H - rh + g.sh - 1) / g.sh, ws = (g.W - rw + g.sw - 1) / g.sw;
      const int64_t taps = static_cast<int64_t>(ti.size() * tj.size());
      if (taps == 0) {  // no tap reads these pixels
        for (int64_t m = 0; m < g.N * hs * ws; ++m) {
          const int64_t n = m / (hs * ws), h = rh + m % (hs * ws) / ws * g.sh, wi = rw + m % ws * g.sw;
          std::fill_n(gin + ((n * g.H + h) * g.W + wi) * g.C, g.C, T(0));
        }
        continue;
      }
      // Pixel (rh + hh * sh, rw + ww * sw) is read by output row hh + dh_[u]
      // through tap ti[u] (exact: the phase was chosen so), column ww + dw_[v].
      std::vector<int64_t> dh_, dw_;
      for (const int64_t i : ti) dh_.push_back((rh + g.ph - i * g.dh) / g.sh);
      for (const int64_t j : tj) dw_.push_back((rw + g.pw - j * g.dw) / g.sw);
      std::vector<const T*> base;
      for (const int64_t i : ti) {
        for (const int64_t j : tj) base.push_back(w + i * g.kw + j);
      }
      // B_t (OC x C): element (oc, c) = weight[oc][c][t].
      const std::vector<T> packed = pack_indirect_b(base, g.OC, g.C, g.C * g.taps(), g.taps());
      // Pixel (n, hh, ww) of the phase: the outputs that read it (zeros where none), its row of gin.
      const auto border_row = [&](int64_t n, int64_t hh, int64_t ww, const T** a, T** c) {
        for (size_t u = 0; u < dh_.size(); ++u) {
          const int64_t oh = hh + dh_[u];
          for (size_t v = 0; v < dw_.size(); ++v, ++a) {
            const int64_t ow = ww + dw_[v];
            const bool inside = oh >= 0 && oh < g.OH && ow >= 0 && ow < g.OW;
            *a = inside ? gout + ((n * g.OH + oh) * g.OW + ow) * g.OC : zeros.data();
          }
        }
        *c = gin + ((n * g.H + rh + hh * g.sh) * g.W + rw + ww * g.sw) * g.C;
      };
      std::vector<int64_t> offset;  // of each tap's output from output (hh, ww)
      for (const int64_t du : dh_) {
        for (const int64_t dv : dw_) offset.push_back((du * g.OW + dv) * g.OC);
      }
      const auto inner_row = [&](int64_t n, int64_t hh, int64_t ww, const T** a, T** c) {
        const T* at = gout + ((n * g.OH + hh) * g.OW + ww) * g.OC;
        for (int64_t t = 0; t < taps; ++t) a[t] = at + offset[t];
        *c = gin + ((n * g.H + rh + hh * g.sh) * g.W + rw + ww * g.sw) * g.C;
      };
      // The phase rows (columns) all of whose taps read an output: dh_ and dw_ fall as the tap index grows.
      const Range inner_h{-dh_.back(), g.OH - dh_.front()}, inner_w{-dw_.back(), g.OW - dw_.front()};
      indirect_gemm<T>(g.N * hs * ws, g.C, taps, g.OC, packed.data(), nullptr,
                       [&](int64_t m0, int64_t mr, const T** a, T** c) {
                         fill_rows(m0, mr, hs, ws, inner_h, inner_w, taps, a, c, inner_row, border_row);
                       });
    }
  }
}

// A channels-last copy of an NCHW tensor (N, C, H, W), or the tensor itself.
at::Tensor to_channels_last(const at::Tensor& t, bool channels_last) {
  return channels_last ? t : channels_last_copy(t);
}

// nchw (overwritten) from its channels-last copy.
void from_channels_last(const at::Tensor& nhwc, const at::Tensor& nchw) {
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, nchw.scalar_type(), "conv2d_from_channels_last", [&] {
    transpose_images(nhwc.const_data_ptr<scalar_t>(), nchw.mutable_data_ptr<scalar_t>(), nchw.size(0),
                     nchw.size(2) * nchw.size(3), nchw.size(1));
  });
}

// gw (OC x taps * C, float, rows contiguous) = gout^T (OC x N * OHW) @ B,
// B's row m holding the input pixels that output pixel m's taps read (zeros
// in the padding): the im2col columns, gathered by the GEMM as it packs B.
template <typename T>
void backward_weight(const T* gout, const T* x, float* gw, const Conv2dGeom& g) {
  const int64_t taps = g.taps();
  const auto rows = output_taps(x, g, static_cast<const T*>(nullptr));
  if constexpr (std::is_same_v<T, float>) {
    gemm_f32_gathered_b(g.OC, taps * g.C, g.N * g.ohw(), gout, 1, g.OC, g.C, rows, gw, taps * g.C, false);
  } else {
    gemm_bf16_gathered_b(g.OC, taps * g.C, g.N * g.ohw(), gout, 1, g.OC, g.C, rows, gw, taps * g.C);
  }
}

}  // namespace

bool dense_backward_weight(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& gw, const Conv2dGeom& g) {
  const bool f32 = x.scalar_type() == at::kFloat, bf16 = x.scalar_type() == at::kBFloat16;
  if (g.groups != 1 || columns_are_input(g) || !own_gemm_enabled() || !(f32 || (bf16 && avx512_bf16_enabled()))) {
    return false;
  }
  const at::Tensor gw_taps = at::empty({g.OC, g.kh, g.kw, g.C}, gw.options().dtype(at::kFloat));
  if (f32) {
    backward_weight(gout.const_data_ptr<float>(), x.const_data_ptr<float>(), gw_taps.mutable_data_ptr<float>(), g);
  } else {
    backward_weight(gout.const_data_ptr<c10::BFloat16>(), x.const_data_ptr<c10::BFloat16>(),
                    gw_taps.mutable_data_ptr<float>(), g);
  }
  gw.copy_(gw_taps.permute({0, 3, 1, 2}));  // bfloat16: rounded once
  return true;
}

at::Tensor channels_last_copy(const at::Tensor& t) {
  at::Tensor out = empty_output(t.sizes(), t.options().memory_format(kCL));
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "conv2d_channels_last_copy", [&] {
    transpose_images(t.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), t.size(0), t.size(1),
                     t.size(2) * t.size(3));
  });
  return out;
}

bool dense_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& output,
                   const Conv2dGeom& g, bool channels_last) {
  if (!applies(g, input.scalar_type(), g.C, channels_last)) return false;
  const at::Tensor x = to_channels_last(input, channels_last);
  const at::Tensor out = channels_last ? output : empty_output(output.sizes(), output.options().memory_format(kCL));
  const at::Tensor w = weight.contiguous();
  std::vector<float> b;
  if (bias.defined()) {
    const at::Tensor bf = bias.to(at::kFloat).contiguous();
    b.assign(bf.const_data_ptr<float>(), bf.const_data_ptr<float>() + g.OC);
  }
  const float* bp = b.empty() ? nullptr : b.data();
  if (x.scalar_type() == at::kFloat) {
    forward(x.const_data_ptr<float>(), w.const_data_ptr<float>(), bp, out.mutable_data_ptr<float>(), g);
  } else {
    forward(x.const_data_ptr<c10::BFloat16>(), w.const_data_ptr<c10::BFloat16>(), bp,
            out.mutable_data_ptr<c10::BFloat16>(), g);
  }
  if (!channels_last) from_channels_last(out, output);
  return true;
}

bool dense_backward_input(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& grad_input,
                          const Conv2dGeom& g, bool channels_last) {
  if (!applies(g, grad_output.scalar_type(), g.OC, channels_last)) return false;
  const at::Tensor gout = to_channels_last(grad_output, channels_last);
  const at::Tensor gin =
      channels_last ? grad_input : empty_output(grad_input.sizes(), grad_input.options().memory_format(kCL));
  const at::Tensor w = weight.contiguous();
  if (gout.scalar_type() == at::kFloat) {
    backward_input(gout.const_data_ptr<float>(), w.const_data_ptr<float>(), gin.mutable_data_ptr<float>(), g);
  } else {
    backward_input(gout.const_data_ptr<c10::BFloat16>(), w.const_data_ptr<c10::BFloat16>(),
                   gin.mutable_data_ptr<c10::BFloat16>(), g);
  }
  if (!channels_last) from_channels_last(gin, grad_input);
  return true;
}

}  // namespace poolops
