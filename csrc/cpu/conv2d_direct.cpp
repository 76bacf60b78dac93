// Channels-last dense conv2d (groups == 1) on CPU without im2col columns:
// each output pixel's row of A is gathered through pointers to the input
// pixels its taps read (indirect_gemm.h). The backward-input pass is the
// same GEMM over the input pixels, one stride phase at a time: the pixels
// with h % sh == rh and w % sw == rw receive gradient through the same taps,
// so no tap is multiplied by structural zeros and no col2im sum is needed.
#include "conv2d_direct.h"

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "indirect_gemm.h"

namespace poolops {
namespace {

bool applies(const Conv2dGeom& g, at::ScalarType type, int64_t K) {
  static const bool enabled = [] {
    const char* v = std::getenv("POOLOPS_GEMM");
    return !(v != nullptr && std::strcmp(v, "0") == 0);
  }();
  const bool columns_are_input = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  return enabled && g.groups == 1 && !columns_are_input && indirect_gemm_supported(type, K);
}

// Positive remainder of a by s.
inline int64_t mod(int64_t a, int64_t s) { return ((a % s) + s) % s; }

template <typename T>
void forward(const T* x, const T* w, const float* bias, T* y, const Conv2dGeom& g) {
  const int64_t taps = g.taps();
  std::vector<const T*> base(taps);
  for (int64_t t = 0; t < taps; ++t) base[t] = w + t;
  // B_t (C x OC): element (c, oc) = weight[oc][c][t].
  const std::vector<T> packed = pack_indirect_b(base, g.C, g.OC, taps, g.C * taps);
  const std::vector<T> zeros(g.C, T(0));
  indirect_gemm<T>(g.N * g.ohw(), g.OC, taps, g.C, packed.data(), bias,
                   [&](int64_t m0, int64_t mr, const T** a, T** c) {
                     int64_t n = m0 / g.ohw(), oh = m0 % g.ohw() / g.OW, ow = m0 % g.OW;
                     for (int64_t r = 0; r < mr; ++r, a += taps) {
                       for (int64_t i = 0; i < g.kh; ++i) {
                         const int64_t h = conv_source(oh, i, g.sh, g.ph, g.dh);
                         for (int64_t j = 0; j < g.kw; ++j) {
                           const int64_t wi = conv_source(ow, j, g.sw, g.pw, g.dw);
                           const bool inside = h >= 0 && h < g.H && wi >= 0 && wi < g.W;
                           a[i * g.kw + j] = inside ? x + ((n * g.H + h) * g.W + wi) * g.C : zeros.data();
                         }
                       }
                       c[r] = y + (m0 + r) * g.OC;
                       if (++ow == g.OW) {
                         ow = 0;
                         if (++oh == g.OH) oh = 0, ++n;
                       }
                     }
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
      indirect_gemm<T>(g.N * hs * ws, g.C, taps, g.OC, packed.data(), nullptr,
                       [&](int64_t m0, int64_t mr, const T** a, T** c) {
                         int64_t n = m0 / (hs * ws), hh = m0 % (hs * ws) / ws, ww = m0 % ws;
                         for (int64_t r = 0; r < mr; ++r) {
                           for (size_t u = 0; u < dh_.size(); ++u) {
                             const int64_t oh = hh + dh_[u];
                             for (size_t v = 0; v < dw_.size(); ++v, ++a) {
                               const int64_t ow = ww + dw_[v];
                               const bool inside = oh >= 0 && oh < g.OH && ow >= 0 && ow < g.OW;
                               *a = inside ? gout + ((n * g.OH + oh) * g.OW + ow) * g.OC : zeros.data();
                             }
                           }
                           c[r] = gin + ((n * g.H + rh + hh * g.sh) * g.W + rw + ww * g.sw) * g.C;
                           if (++ww == ws) {
                             ww = 0;
                             if (++hh == hs) hh = 0, ++n;
                           }
                         }
                       });
    }
  }
}

}  // namespace

bool dense_forward_nhwc(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                        const Conv2dGeom& g) {
  if (!applies(g, x.scalar_type(), g.C)) return false;
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
  return true;
}

bool dense_backward_input_nhwc(const at::Tensor& gout, const at::Tensor& weight, const at::Tensor& gin,
                               const Conv2dGeom& g) {
  if (!applies(g, gout.scalar_type(), g.OC)) return false;
  const at::Tensor w = weight.contiguous();
  if (gout.scalar_type() == at::kFloat) {
    backward_input(gout.const_data_ptr<float>(), w.const_data_ptr<float>(), gin.mutable_data_ptr<float>(), g);
  } else {
    backward_input(gout.const_data_ptr<c10::BFloat16>(), w.const_data_ptr<c10::BFloat16>(),
                   gin.mutable_data_ptr<c10::BFloat16>(), g);
  }
  return true;
}

}  // namespace poolops
