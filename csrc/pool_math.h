// The per-element pooling math, shared by the CPU and CUDA kernels (the only
// C++ copy of these formulas). Semantics follow ATen; see README "Semantics".
#pragma once

#include <ATen/NumericUtils.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>
#include <type_traits>

namespace poolops {

// Half-open range [begin, end) walked with a step (the dilation for taps).
struct Range {
  int64_t begin;
  int64_t end;
  C10_HOST_DEVICE bool empty() const { return begin >= end; }
};

// Geometry of one 2-D pooling call. Input (N, C, H, W), output (N, C, OH, OW).
// ph and pw are the top and left padding; the bottom and right padding only
// show in OH and OW.
struct Pool2dGeom {
  int64_t N, C, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Element strides of a 4-D tensor in NCHW or NHWC order.
struct Strides4 {
  int64_t n, c, h, w;
};

C10_HOST_DEVICE inline Strides4 strides_for(int64_t C, int64_t H, int64_t W, bool channels_last) {
  return channels_last ? Strides4{H * W * C, 1, W * C, C} : Strides4{C * H * W, H * W, W, 1};
}

C10_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Number of windows of extent eff, s apart, that fit in `in` positions padded
// by p_begin before and p_end after (the floor-mode output length).
C10_HOST_DEVICE inline int64_t sweep_output_size(int64_t in, int64_t eff, int64_t s, int64_t p_begin, int64_t p_end) {
  return floor_div(in + p_begin + p_end - eff, s) + 1;
}

// Output length of a pooling window sweep (ATen's pooling_output_shape).
// In ceil mode a last window that would start in the right padding is dropped.
C10_HOST_DEVICE inline int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
                                                bool ceil_mode) {
  const int64_t eff = d * (k - 1) + 1;
  int64_t out = sweep_output_size(in, eff, s, p, p + (ceil_mode ? s - 1 : 0));
  if (ceil_mode && (out - 1) * s >= in + p) {
    --out;
  }
  return out;
}

// In-range taps of output position o: begin, begin + d, ... < end. Taps in the
// left padding are skipped along the dilation grid; the range may be empty
// (a dilated window lying wholly in padding).
C10_HOST_DEVICE inline Range max_pool_taps(int64_t o, int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  int64_t begin = o * s - p;
  int64_t end = begin + (k - 1) * d + 1;
  if (end > in) end = in;
  if (begin < 0) begin += ((-begin + d - 1) / d) * d;
  return {begin, end};
}

// Outputs whose (dilated) window span contains input position i. With dilation
// a covering window may still skip i; callers compare the stored argmax.
C10_HOST_DEVICE inline Range max_pool_covering(int64_t i, int64_t out_size, int64_t k, int64_t s, int64_t p,
                                              int64_t d) {
  int64_t hi = (i + p) / s + 1;
  if (hi > out_size) hi = out_size;
  const int64_t lo_num = i + p - (k - 1) * d;
  const int64_t lo = lo_num <= 0 ? 0 : (lo_num + s - 1) / s;
  return {lo, hi};
}

template <typename T>
C10_HOST_DEVICE inline T lowest_value() {
  return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity()
                                              : std::numeric_limits<T>::lowest();
}

// The max-pool update rule: strict '>' keeps the first of equal values,
// and every NaN replaces (so the last NaN in scan order wins).
template <typename acc_t>
C10_HOST_DEVICE inline bool max_pool_takes(acc_t v, acc_t best) {
  return v > best || at::_isnan(v);
}

// Row-major scan of one window of a plane. The index is h * W + w within the
// plane; a window with no in-range tap gives the lowest value and index -1.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void max_pool_scan(const scalar_t* plane, int64_t s_h, int64_t s_w, int64_t W, Range rh,
                                          Range rw, int64_t dh, int64_t dw, acc_t& best, int64_t& arg) {
  best = lowest_value<acc_t>();
  arg = (rh.empty() || rw.empty()) ? -1 : rh.begin * W + rw.begin;
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = rw.begin; w < rw.end; w += dw) {
      const acc_t v = static_cast<acc_t>(plane[h * s_h + w * s_w]);
      if (max_pool_takes(v, best)) {
        best = v;
        arg = h * W + w;
      }
    }
  }
}

// Training without indices stores, per output, the argmax's tap within its
// window (th * kw + tw, one byte) instead of an int64 index; kNoTap marks a
// window with no input element.
constexpr uint8_t kNoTap = 255;

C10_HOST_DEVICE inline uint8_t max_pool_tap_of(int64_t index, int64_t oh, int64_t ow, const Pool2dGeom& g) {
  if (index < 0) return kNoTap;
  const int64_t th = (index / g.W - (oh * g.sh - g.ph)) / g.dh;
  const int64_t tw = (index % g.W - (ow * g.sw - g.pw)) / g.dw;
  return static_cast<uint8_t>(th * g.kw + tw);
}

// What the forward stores for an argmax: the flat index, or its tap.
template <typename stored_t>
C10_HOST_DEVICE inline stored_t max_pool_store(int64_t index, int64_t oh, int64_t ow, const Pool2dGeom& g) {
  if constexpr (std::is_same_v<stored_t, uint8_t>) {
    return max_pool_tap_of(index, oh, ow, g);
  } else {
    return static_cast<stored_t>(index);
  }
}

// The flat index h * W + w of a stored argmax: an int64 index as it is, a tap decoded.
C10_HOST_DEVICE inline int64_t max_pool_index(int64_t stored, int64_t, int64_t, const Pool2dGeom&) { return stored; }
C10_HOST_DEVICE inline int64_t max_pool_index(uint8_t tap, int64_t oh, int64_t ow, const Pool2dGeom& g) {
  if (tap == kNoTap) return -1;
  return (oh * g.sh - g.ph + (tap / g.kw) * g.dh) * g.W + (ow * g.sw - g.pw + (tap % g.kw) * g.dw);
}

// Gradient of input element (h, w): the sum, in output row-major order, of the
// output gradients whose argmax is this element. Deterministic, no atomics.
template <typename scalar_t, typename acc_t, typename stored_t>
C10_HOST_DEVICE inline acc_t max_pool_grad_gather(const scalar_t* gout_plane, const stored_t* idx_plane,
                                                  int64_t so_h, int64_t so_w, const Pool2dGeom& g, int64_t h,
                                                  int64_t w) {
  const Range ro = max_pool_covering(h, g.OH, g.kh, g.sh, g.ph, g.dh);
  const Range co = max_pool_covering(w, g.OW, g.kw, g.sw, g.pw, g.dw);
  const int64_t target = h * g.W + w;
  acc_t sum = acc_t(0);
  for (int64_t oh = ro.begin; oh < ro.end; ++oh) {
    for (int64_t ow = co.begin; ow < co.end; ++ow) {
      const int64_t o = oh * so_h + ow * so_w;
      if (max_pool_index(idx_plane[o], oh, ow, g) == target) sum += static_cast<acc_t>(gout_plane[o]);
    }
  }
  return sum;
}

// ---- average pooling -------------------------------------------------------------------------

// Divisor choice of one avg_pool2d call; divisor_override == 0 means none.
// The padded extent ends pad_bottom / pad_right past the input (the top and
// left padding are in Pool2dGeom).
struct AvgPoolOpts {
  bool count_include_pad;
  int64_t divisor_override;
  int64_t pad_bottom, pad_right;
};

// One avg window along a dim: the in-range taps (d apart), the taps inside the
// padded input (the ceil-mode overhang past it is never counted), and the
// taps on real elements.
struct AvgWindow {
  Range taps;
  int64_t padded;
  int64_t real;
};

C10_HOST_DEVICE inline int64_t tap_count(int64_t begin, int64_t end, int64_t d) {
  return begin < end ? (end - begin + d - 1) / d : 0;
}

C10_HOST_DEVICE inline AvgWindow avg_pool_window(int64_t o, int64_t in, int64_t k, int64_t s, int64_t p,
                                                 int64_t p_end, int64_t d) {
  const Range taps = max_pool_taps(o, in, k, s, p, d);
  const int64_t begin = o * s - p;
  const int64_t span_end = begin + (k - 1) * d + 1;
  const int64_t end = span_end < in + p_end ? span_end : in + p_end;
  return {taps, tap_count(begin, end, d), tap_count(taps.begin, taps.end, d)};
}

C10_HOST_DEVICE inline AvgWindow avg_row_window(int64_t oh, const Pool2dGeom& g, const AvgPoolOpts& opt) {
  return avg_pool_window(oh, g.H, g.kh, g.sh, g.ph, opt.pad_bottom, g.dh);
}

C10_HOST_DEVICE inline AvgWindow avg_col_window(int64_t ow, const Pool2dGeom& g, const AvgPoolOpts& opt) {
  return avg_pool_window(ow, g.W, g.kw, g.sw, g.pw, opt.pad_right, g.dw);
}

C10_HOST_DEVICE inline int64_t avg_pool_divisor(const AvgWindow& wh, const AvgWindow& ww, const AvgPoolOpts& opt) {
  if (opt.divisor_override != 0) return opt.divisor_override;
  if (opt.count_include_pad) return wh.padded * ww.padded;
  return wh.real * ww.real;
}

// Sequential row-major sum of a window of a plane (taps dh and dw apart), in
// the accumulator type.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t window_sum(const scalar_t* plane, int64_t s_h, int64_t s_w, Range rh, Range rw,
                                        int64_t dh = 1, int64_t dw = 1) {
  acc_t sum = acc_t(0);
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = rw.begin; w < rw.end; w += dw) sum += static_cast<acc_t>(plane[h * s_h + w * s_w]);
  }
  return sum;
}

// avg_pool2d output (oh, ow) of one plane: the window sum, then a true division.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t avg_pool_output(const scalar_t* plane, int64_t s_h, int64_t s_w, const Pool2dGeom& g,
                                             const AvgPoolOpts& opt, int64_t oh, int64_t ow) {
  const AvgWindow wh = avg_row_window(oh, g, opt);
  const AvgWindow ww = avg_col_window(ow, g, opt);
  if (wh.taps.empty() || ww.taps.empty()) return acc_t(0);
  return window_sum<scalar_t, acc_t>(plane, s_h, s_w, wh.taps, ww.taps, g.dh, g.dw) /
         static_cast<acc_t>(avg_pool_divisor(wh, ww, opt));
}

// Gradient of input element (h, w): sum of grad / divisor over the outputs
// that have it as a tap, in output row-major order. Deterministic, no atomics.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t avg_pool_grad_gather(const scalar_t* gout_plane, int64_t so_h, int64_t so_w,
                                                  const Pool2dGeom& g, const AvgPoolOpts& opt, int64_t h, int64_t w) {
  const Range ro = max_pool_covering(h, g.OH, g.kh, g.sh, g.ph, g.dh);
  const Range co = max_pool_covering(w, g.OW, g.kw, g.sw, g.pw, g.dw);
  acc_t sum = acc_t(0);
  for (int64_t oh = ro.begin; oh < ro.end; ++oh) {
    if ((h + g.ph - oh * g.sh) % g.dh != 0) continue;
    const AvgWindow wh = avg_row_window(oh, g, opt);
    for (int64_t ow = co.begin; ow < co.end; ++ow) {
      if ((w + g.pw - ow * g.sw) % g.dw != 0) continue;
      const AvgWindow ww = avg_col_window(ow, g, opt);
      sum += static_cast<acc_t>(gout_plane[oh * so_h + ow * so_w]) /
             static_cast<acc_t>(avg_pool_divisor(wh, ww, opt));
    }
  }
  return sum;
}

// ---- adaptive pooling ------------------------------------------------------------------------

// Window of output o when `in` positions map onto `out`: [floor(o*in/out), ceil((o+1)*in/out)).
// Swapping in and out gives the outputs whose windows contain input position o.
C10_HOST_DEVICE inline Range adaptive_window(int64_t o, int64_t in, int64_t out) {
  return {(o / out) * in + ((o % out) * in) / out, 1 + ((o + 1) * in - 1) / out};
}

C10_HOST_DEVICE inline Range adaptive_covering(int64_t i, int64_t in, int64_t out) {
  return adaptive_window(i, out, in);
}

// Adaptive average: the window sum divided by kh and then by kw (as ATen does).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t adaptive_avg_output(const scalar_t* plane, int64_t s_h, int64_t s_w,
                                                 const Pool2dGeom& g, int64_t oh, int64_t ow) {
  const Range rh = adaptive_window(oh, g.H, g.OH);
  const Range rw = adaptive_window(ow, g.W, g.OW);
  const acc_t sum = window_sum<scalar_t, acc_t>(plane, s_h, s_w, rh, rw);
  return sum / static_cast<acc_t>(rh.end - rh.begin) / static_cast<acc_t>(rw.end - rw.begin);
}

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void adaptive_max_output(const scalar_t* plane, int64_t s_h, int64_t s_w,
                                                const Pool2dGeom& g, int64_t oh, int64_t ow, acc_t& best,
                                                int64_t& arg) {
  max_pool_scan(plane, s_h, s_w, g.W, adaptive_window(oh, g.H, g.OH), adaptive_window(ow, g.W, g.OW), 1, 1, best,
                arg);
}

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t adaptive_avg_grad_gather(const scalar_t* gout_plane, int64_t so_h, int64_t so_w,
                                                      const Pool2dGeom& g, int64_t h, int64_t w) {
  const Range ro = adaptive_covering(h, g.H, g.OH);
  const Range co = adaptive_covering(w, g.W, g.OW);
  acc_t sum = acc_t(0);
  for (int64_t oh = ro.begin; oh < ro.end; ++oh) {
    const Range rh = adaptive_window(oh, g.H, g.OH);
    for (int64_t ow = co.begin; ow < co.end; ++ow) {
      const Range rw = adaptive_window(ow, g.W, g.OW);
      sum += static_cast<acc_t>(gout_plane[oh * so_h + ow * so_w]) / static_cast<acc_t>(rh.end - rh.begin) /
             static_cast<acc_t>(rw.end - rw.begin);
    }
  }
  return sum;
}

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t adaptive_max_grad_gather(const scalar_t* gout_plane, const int64_t* idx_plane,
                                                      int64_t so_h, int64_t so_w, const Pool2dGeom& g, int64_t h,
                                                      int64_t w) {
  const Range ro = adaptive_covering(h, g.H, g.OH);
  const Range co = adaptive_covering(w, g.W, g.OW);
  const int64_t target = h * g.W + w;
  acc_t sum = acc_t(0);
  for (int64_t oh = ro.begin; oh < ro.end; ++oh) {
    for (int64_t ow = co.begin; ow < co.end; ++ow) {
      const int64_t o = oh * so_h + ow * so_w;
      if (idx_plane[o] == target) sum += static_cast<acc_t>(gout_plane[o]);
    }
  }
  return sum;
}

// ---- global pooling (one output per plane) ---------------------------------------------------

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t global_avg_output(const scalar_t* plane, int64_t s_hw, int64_t HW) {
  acc_t sum = acc_t(0);
  for (int64_t i = 0; i < HW; ++i) sum += static_cast<acc_t>(plane[i * s_hw]);
  return sum / static_cast<acc_t>(HW);
}

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void global_max_output(const scalar_t* plane, int64_t s_hw, int64_t HW, acc_t& best,
                                              int64_t& arg) {
  max_pool_scan(plane, int64_t(0), s_hw, HW, Range{0, 1}, Range{0, HW}, 1, 1, best, arg);
}

// Splits a linear index in the layout's memory order into (n, c, h, w).
C10_HOST_DEVICE inline void decode_nchw(int64_t i, int64_t C, int64_t H, int64_t W, bool channels_last, int64_t& n,
                                        int64_t& c, int64_t& h, int64_t& w) {
  if (channels_last) {
    c = i % C;
    i /= C;
    w = i % W;
    i /= W;
    h = i % H;
    n = i / H;
  } else {
    w = i % W;
    i /= W;
    h = i % H;
    i /= H;
    c = i % C;
    n = i / C;
  }
}

}  // namespace poolops
