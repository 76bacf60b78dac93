// The per-element convolution math shared by the CPU and CUDA kernels:
// output size, the im2col/col2im element mapping and the depthwise
// per-output dot product and per-input gather.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "pool_math.h"

namespace poolops {

// Geometry of one conv2d call. Input (N, C, H, W), weight (OC, C / groups, kh, kw),
// output (N, OC, OH, OW). ph and pw are the top and left padding; the bottom
// and right padding only show in OH and OW.
struct Conv2dGeom {
  int64_t N, C, H, W, OC, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t groups;

  C10_HOST_DEVICE int64_t cg() const { return C / groups; }    // input channels per group
  C10_HOST_DEVICE int64_t ocg() const { return OC / groups; }  // output channels per group
  C10_HOST_DEVICE int64_t taps() const { return kh * kw; }
  C10_HOST_DEVICE int64_t kg() const { return cg() * kh * kw; }  // im2col rows per group
  C10_HOST_DEVICE int64_t ohw() const { return OH * OW; }
};

// Positions a sweep over `in` padded by p_begin touches, padding included:
// the input itself and every window's extent.
C10_HOST_DEVICE inline int64_t conv_padded_extent(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p_begin,
                                                  int64_t d) {
  const int64_t windows = (out - 1) * s + d * (k - 1) + 1;
  return in + p_begin > windows ? in + p_begin : windows;
}

// Input position read by output o through tap t (may lie in the padding).
C10_HOST_DEVICE inline int64_t conv_source(int64_t o, int64_t t, int64_t s, int64_t p, int64_t d) {
  return o * s - p + t * d;
}

// The outputs [begin, end) whose tap t reads an in-range input position.
C10_HOST_DEVICE inline Range conv_tap_outputs(int64_t t, int64_t in, int64_t out, int64_t s, int64_t p,
                                              int64_t d) {
  const int64_t off = t * d - p;  // source = o * s + off
  int64_t begin = off >= 0 ? 0 : (-off + s - 1) / s;
  int64_t end = off > in - 1 ? 0 : (in - 1 - off) / s + 1;
  if (end > out) end = out;
  if (begin > end) begin = end;
  return {begin, end};
}

// True when im2col would copy the input unchanged (1x1, stride 1, no padding):
// the columns are then a view of the input.
C10_HOST_DEVICE inline bool columns_are_input(const Conv2dGeom& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.OH == g.H && g.OW == g.W;
}

// True when im2col columns (taps x output pixels per channel) hold at least
// as many elements as the input: an NCHW conv then does better on a
// channels-last copy of its data (a 3x3 stride-2 conv, not a 1x1 stride-2 one).
C10_HOST_DEVICE inline bool columns_outgrow_input(const Conv2dGeom& g) {
  return g.kh * g.kw * g.OH * g.OW >= g.H * g.W;
}

// The outputs all of whose taps read in-range input positions.
C10_HOST_DEVICE inline Range conv_inner_outputs(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d) {
  const Range first = conv_tap_outputs(0, in, out, s, p, d), last = conv_tap_outputs(k - 1, in, out, s, p, d);
  return {first.begin, last.end};
}

// The output that reads input position i through tap t, or -1 when none does.
C10_HOST_DEVICE inline int64_t conv_reader(int64_t i, int64_t t, int64_t out, int64_t s, int64_t p, int64_t d) {
  const int64_t num = i + p - t * d;
  if (num < 0 || num % s != 0) return -1;
  const int64_t o = num / s;
  return o < out ? o : -1;
}

// Column-matrix layout. NCHW: per image a (K, OH*OW) matrix, row k = (c*kh + i)*kw + j.
// NHWC: per image a (OH*OW, K) matrix, column k = ((g*kh + i)*kw + j)*cg + c_in_group,
// so each group's columns are one contiguous block, as in the NCHW rows.
C10_HOST_DEVICE inline int64_t col_row(const Conv2dGeom& g, int64_t c, int64_t i, int64_t j, bool channels_last) {
  if (!channels_last) return (c * g.kh + i) * g.kw + j;
  const int64_t grp = c / g.cg();
  return ((grp * g.kh + i) * g.kw + j) * g.cg() + (c - grp * g.cg());
}

C10_HOST_DEVICE inline int64_t col_offset(const Conv2dGeom& g, int64_t k, int64_t pix, bool channels_last) {
  const int64_t K = g.C * g.kh * g.kw;
  return channels_last ? pix * K + k : k * g.ohw() + pix;
}

// fn(i, j, h, w) for every tap (i, j) of output (oh, ow) that reads an
// in-range input (h, w), in row-major tap order.
template <typename Fn>
C10_HOST_DEVICE inline void for_each_source_tap(const Conv2dGeom& g, int64_t oh, int64_t ow, const Fn& fn) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t h = conv_source(oh, i, g.sh, g.ph, g.dh);
    if (h < 0 || h >= g.H) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t w = conv_source(ow, j, g.sw, g.pw, g.dw);
      if (w >= 0 && w < g.W) fn(i, j, h, w);
    }
  }
}

// fn(i, j, oh, ow) for every tap (i, j) that reads input (h, w) into output
// (oh, ow), in row-major tap order.
template <typename Fn>
C10_HOST_DEVICE inline void for_each_reader_tap(const Conv2dGeom& g, int64_t h, int64_t w, const Fn& fn) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t oh = conv_reader(h, i, g.OH, g.sh, g.ph, g.dh);
    if (oh < 0) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t ow = conv_reader(w, j, g.OW, g.sw, g.pw, g.dw);
      if (ow >= 0) fn(i, j, oh, ow);
    }
  }
}

// col2im for one input element (c, h, w) of one image: the sum of the column
// entries that im2col copied from it, in tap order. Deterministic gather.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t col2im_gather(const scalar_t* cols, const Conv2dGeom& g, int64_t c, int64_t h,
                                           int64_t w, bool channels_last) {
  acc_t sum = acc_t(0);
  for_each_reader_tap(g, h, w, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
    sum += static_cast<acc_t>(cols[col_offset(g, col_row(g, c, i, j, channels_last), oh * g.OW + ow, channels_last)]);
  });
  return sum;
}

// Depthwise (groups == C, OC = m*C): output channel oc reads input channel oc / m.
// One output element: the dot product of the in-range taps with the weights
// (wt points at the kh*kw weights of oc; x at the input plane of oc / m).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t depthwise_output(const scalar_t* x, int64_t s_h, int64_t s_w, const scalar_t* wt,
                                              const Conv2dGeom& g, int64_t oh, int64_t ow) {
  acc_t sum = acc_t(0);
  for_each_source_tap(g, oh, ow, [&](int64_t i, int64_t j, int64_t h, int64_t w) {
    sum += static_cast<acc_t>(x[h * s_h + w * s_w]) * static_cast<acc_t>(wt[i * g.kw + j]);
  });
  return sum;
}

// Depthwise input gradient of element (c, h, w): over the m output channels of
// c and their taps that read (h, w). gout points at image n's plane of output
// channel c*m (planes so_c apart), wt at the weights of output channel c*m.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t depthwise_input_grad(const scalar_t* gout, int64_t so_c, int64_t so_h, int64_t so_w,
                                                  const scalar_t* wt, const Conv2dGeom& g, int64_t h, int64_t w) {
  const int64_t m = g.OC / g.C;
  acc_t sum = acc_t(0);
  for (int64_t r = 0; r < m; ++r) {
    for_each_reader_tap(g, h, w, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
      sum += static_cast<acc_t>(gout[r * so_c + oh * so_h + ow * so_w]) *
             static_cast<acc_t>(wt[(r * g.kh + i) * g.kw + j]);
    });
  }
  return sum;
}

}  // namespace poolops
