// The per-element pooling math, shared by the CPU and CUDA kernels (the only
// C++ copy of these formulas). Semantics follow ATen; see README "Semantics".
#pragma once

#include <ATen/NumericUtils.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

namespace poolops {

// Half-open range [begin, end) walked with a step (the dilation for taps).
struct Range {
  int64_t begin;
  int64_t end;
  C10_HOST_DEVICE bool empty() const { return begin >= end; }
};

// Geometry of one 2-D pooling call. Input (N, C, H, W), output (N, C, OH, OW).
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

// Output length of a pooling window sweep (ATen's pooling_output_shape).
// In ceil mode a last window that would start in the right padding is dropped.
C10_HOST_DEVICE inline int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
                                                bool ceil_mode) {
  const int64_t eff = d * (k - 1) + 1;
  int64_t out = floor_div(in + 2 * p - eff + (ceil_mode ? s - 1 : 0), s) + 1;
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

// Gradient of input element (h, w): the sum, in output row-major order, of the
// output gradients whose argmax is this element. Deterministic, no atomics.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t max_pool_grad_gather(const scalar_t* gout_plane, const int64_t* idx_plane,
                                                  int64_t so_h, int64_t so_w, const Pool2dGeom& g, int64_t h,
                                                  int64_t w) {
  const Range ro = max_pool_covering(h, g.OH, g.kh, g.sh, g.ph, g.dh);
  const Range co = max_pool_covering(w, g.OW, g.kw, g.sw, g.pw, g.dw);
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

}  // namespace poolops
