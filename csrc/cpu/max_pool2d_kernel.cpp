// max_pool2d on CPU: forward (with or without indices) and the gather backward.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../pool_args.h"
#include "cpu_loops.h"
#include "vec16.h"
#include "vec8.h"

namespace poolops {
namespace {

// kV consecutive outputs of one NCHW row over every tap of their windows in
// row-major order. at(r, t) points at the input of tap t in window row r for
// the first output; the others lie `step` apart (kStep > 0 fixes it). An
// argmax is the tap number (kTaps) or the flat index: `first` for the first
// tap of the first output, row_step and tap_step on per tap, out_step per
// output. The eight-float version keeps its lanes in one AVX2 register.
template <int kV, int kStep, bool kIdx, bool kTaps, typename acc_t, typename index_t, typename At, typename scalar_t,
          typename out_t>
inline void max_row_block(const At& at, int64_t step, int64_t rows, int64_t kw, index_t first, index_t row_step,
                          index_t tap_step, index_t out_step, scalar_t* y, out_t* idx) {
  const int64_t st = kStep > 0 ? kStep : step;
  acc_t best[kV];
  index_t arg[kV];
  for (int j = 0; j < kV; ++j) {
    best[j] = lowest_value<acc_t>();
    if (kIdx) arg[j] = kTaps ? first : first + j * out_step;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < kw; ++t) {
      const auto* src = at(r, t);
      const index_t tap = first + static_cast<index_t>(r) * row_step + static_cast<index_t>(t) * tap_step;
      for (int j = 0; j < kV; ++j) {
        const acc_t v = static_cast<acc_t>(src[j * st]);
        const bool take = max_pool_takes(v, best[j]);
        best[j] = take ? v : best[j];
        if (kIdx) arg[j] = take ? (kTaps ? tap : tap + j * out_step) : arg[j];
      }
    }
  }
  for (int j = 0; j < kV; ++j) {
    y[j] = static_cast<scalar_t>(best[j]);
    if (kIdx) idx[j] = static_cast<out_t>(arg[j]);
  }
}

template <int kStep, bool kIdx, bool kTaps, typename At, typename scalar_t, typename out_t>
inline void max_row_vec8(const At& at, int64_t step, bool pairs, int64_t rows, int64_t kw, int32_t first,
                         int32_t row_step, int32_t tap_step, int32_t out_step, scalar_t* y, out_t* idx) {
  using namespace vec8;
  f32x8 best = broadcast(lowest_value<float>());
  if constexpr (!kIdx) {
    // Values only: the largest non-NaN value (ties keep the first, one vmaxps a tap) and the last NaN
    // apart, the NaN winning at the end: what max_pool_takes gives, in three operations a tap, not four.
    f32x8 last_nan = best;
    for (int64_t r = 0; r < rows; ++r) {
      for_each_tap<kStep>(at, r, kw, step, pairs, [&](int64_t, f32x8 v) {
        best = v > best ? v : best;
        last_nan = v != v ? v : last_nan;
      });
    }
    store(y, last_nan != last_nan ? last_nan : best);
    return;
  }
  const i32x8 lane = kTaps ? i32x8{} : iota() * out_step;
  i32x8 arg = first + lane;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < kw; ++t) {
      const f32x8 v = load<kStep>(at(r, t), step);
      const i32x8 take = takes(v, best);
      best = take ? v : best;
      if (kIdx) arg = take ? (first + static_cast<int32_t>(r) * row_step + static_cast<int32_t>(t) * tap_step) + lane : arg;
    }
  }
  store(y, best);
  if (kIdx) store_index(idx, arg);
}

// kB row blocks (RowBlock8, aux: the first output's input index, or with
// kTaps its first tap's) at stride kStep, window rows rs apart, taps dw
// (for_each_tap_blocks8). Argmaxes as max_row_vec8's. One vmaxps a tap (ties
// keep the first), a tap taken where it compares greater, and the sum of the
// taps beside them, kB blocks at a time: a block whose sum is NaN holds a NaN
// (or infinities of both signs) and is done again by max_row_vec8, where the
// last NaN wins. (max_row_vec8 alone, a block at a time with a second blend a
// tap for the NaN: the stem's NCHW forward took 1.5x as long on AVX2.)
template <int kB, int kStep, bool kIdx, bool kTaps, typename scalar_t, typename out_t>
__attribute__((always_inline)) inline void max_blocks8(const RowBlock8<scalar_t>* blocks, int64_t rs, int64_t rows,
                                                      int64_t kw, int64_t dw, bool pairs, int32_t row_step,
                                                      int32_t tap_step, scalar_t* y, out_t* idx) {
  using namespace vec8;
  const bool paired = kStep == 2 && pairs;
  // Each lane's output offset from its block's first, in the lane order of the loads.
  const i32x8 order = paired ? bit_cast<i32x8>(from_pair_order<scalar_t>(bit_cast<f32x8>(iota()))) : iota();
  const i32x8 lane = kTaps ? i32x8{} : order * kStep;
  f32x8 best[kB], sum[kB];
  i32x8 base[kB], arg[kB];
#pragma GCC unroll 4  // else GCC zeroes sum with a rep stos: a fifth of the stem's time
  for (int b = 0; b < kB; ++b) {
    best[b] = broadcast(lowest_value<float>());
    sum[b] = broadcast(0.0f);
    base[b] = arg[b] = broadcast(static_cast<int32_t>(blocks[b].aux)) + lane;
  }
  for_each_tap_blocks8<kB, kStep>(blocks, rs, rows, kw, dw, pairs, [&](int b, f32x8 v, int64_t r, int64_t t) {
    if (kIdx) arg[b] = v > best[b] ? base[b] + static_cast<int32_t>(r * row_step + t * tap_step) : arg[b];
    best[b] = v > best[b] ? v : best[b];
    sum[b] += v;
  });
  f32x8 all = sum[0];
  for (int b = 1; b < kB; ++b) all += sum[b];
  for (int b = 0; b < kB; ++b) {
    scalar_t* yb = y + blocks[b].out;
    out_t* ib = kIdx ? idx + blocks[b].out : nullptr;
    if (any_nan(all) && any_nan(sum[b])) {
      const scalar_t* at0 = blocks[b].src;
      const auto at = [at0, rs, dw](int64_t i, int64_t t) { return at0 + i * rs + t * dw; };
      const int32_t first = static_cast<int32_t>(blocks[b].aux);
      max_row_vec8<kStep, kIdx, kTaps>(at, kStep, pairs, rows, kw, first, row_step, tap_step, kStep, yb, ib);
    } else if (paired) {
      store(yb, from_pair_order<scalar_t>(best[b]));
      if (kIdx) store_index(ib, bit_cast<i32x8>(from_pair_order<scalar_t>(bit_cast<f32x8>(arg[b]))));
    } else {
      store(yb, best[b]);
      if (kIdx) store_index(ib, arg[b]);
    }
  }
}

#if defined(__x86_64__)
// max_row_vec8 for sixteen outputs in one AVX-512 register (chosen at run
// time): the same operations lane by lane.
template <int kStep, bool kIdx, bool kTaps, typename At, typename scalar_t, typename out_t>
__attribute__((target("avx512f"))) void max_row_vec16(const At& at, int64_t step, bool pairs, int64_t rows, int64_t kw,
                                                      int32_t first, int32_t row_step, int32_t tap_step,
                                                      int32_t out_step, scalar_t* y, out_t* idx) {
  __m512 best = _mm512_set1_ps(lowest_value<float>());
  if constexpr (!kIdx) {
    __m512 last_nan = best;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t t = 0;
      __m512 v[2];
      int n = 0;
      for (; t < kw; t += n) {
        if (kStep == 2 && pairs && t + 1 < kw) {
          vec16::load2_pair(at(r, t), v[0], v[1]);
          n = 2;
        } else {
          v[0] = kStep == 2 && pairs && t > 0 ? vec16::load2_after(at(r, t)) : vec16::load<kStep>(at(r, t), step);
          n = 1;
        }
        for (int i = 0; i < n; ++i) {
          best = vec16::max_over(v[i], best);
          last_nan = _mm512_mask_mov_ps(last_nan, _mm512_cmp_ps_mask(v[i], v[i], _CMP_UNORD_Q), v[i]);
        }
      }
    }
    vec16::store(y, _mm512_mask_mov_ps(best, _mm512_cmp_ps_mask(last_nan, last_nan, _CMP_UNORD_Q), last_nan));
    return;
  }
  const __m512i lane = kTaps ? _mm512_setzero_si512()
                             : _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                  _mm512_set1_epi32(out_step));
  __m512i arg = _mm512_add_epi32(_mm512_set1_epi32(first), lane);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < kw; ++t) {
      const __m512 v = vec16::load<kStep>(at(r, t), step);
      const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, take, v);
      const int32_t tap = first + static_cast<int32_t>(r) * row_step + static_cast<int32_t>(t) * tap_step;
      arg = _mm512_mask_mov_epi32(arg, take, _mm512_add_epi32(_mm512_set1_epi32(tap), lane));
    }
  }
  vec16::store(y, best);
  vec16::store_index(idx, arg);
}

// kB blocks of sixteen consecutive outputs of one NCHW row, from output c0
// on, at stride 2 with taps loaded in pairs (tap_pairs). src points at tap 0
// of window row 0 of output 0; window rows lie rs apart. Argmaxes as
// max_row_vec16's, first being output 0's. One vmaxps a tap (ties keep the
// first), a tap taken where it compares greater, and the sum of the taps
// beside them: a block whose sum is NaN holds a NaN, or infinities of both
// signs, and is done again by max_row_vec16 (the last NaN wins).
template <int kB, bool kIdx, bool kTaps, typename scalar_t, typename out_t>
__attribute__((target("avx512f"))) inline void max_blocks_pairs16(const scalar_t* src, int64_t rs, int64_t rows,
                                                                  int64_t kw, int64_t c0, int32_t first,
                                                                  int32_t row_step, scalar_t* y, out_t* idx) {
  const __m512i lane = kTaps ? _mm512_setzero_si512()
                             : _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
  int32_t firsts[kB];
  __m512 best[kB], sum[kB];
  __m512i base[kB], arg[kB];
  for (int b = 0; b < kB; ++b) {
    firsts[b] = kTaps ? first : first + static_cast<int32_t>(2 * (c0 + 16 * b));
    best[b] = _mm512_set1_ps(lowest_value<float>());
    sum[b] = _mm512_setzero_ps();
    arg[b] = base[b] = _mm512_add_epi32(_mm512_set1_epi32(firsts[b]), lane);
  }
  for_each_pair_tap16<kB>(src + 2 * c0, rs, rows, kw,
                          [&](int b, __m512 v, int64_t r, int64_t t) __attribute__((target("avx512f"))) {
    if constexpr (kIdx) {
      const __m512i tap = _mm512_add_epi32(base[b], _mm512_set1_epi32(static_cast<int32_t>(r * row_step + t)));
      arg[b] = _mm512_mask_mov_epi32(arg[b], _mm512_cmp_ps_mask(v, best[b], _CMP_GT_OQ), tap);
    }
    best[b] = vec16::max_over(v, best[b]);
    sum[b] = _mm512_add_ps(sum[b], v);
  });
  for (int b = 0; b < kB; ++b) {
    const int64_t o = c0 + 16 * b;
    out_t* io = kIdx ? idx + o : nullptr;
    if (_mm512_cmp_ps_mask(sum[b], sum[b], _CMP_UNORD_Q) != 0) {
      const scalar_t* at0 = src + 2 * o;
      const auto at = [at0, rs](int64_t i, int64_t t) { return at0 + i * rs + t; };
      max_row_vec16<2, kIdx, kTaps>(at, 2, true, rows, kw, firsts[b], row_step, 1, 2, y + o, io);
    } else {
      vec16::store_exact(y + o, best[b]);
      if constexpr (kIdx) vec16::store_index(io, arg[b]);
    }
  }
}

#endif

// The value of a border window without its index: one vmaxss a tap, which is
// max_pool_takes while no NaN is seen; a window holding a NaN is scanned again
// by max_pool_scan. (max_pool_scan's branch a tap, mispredicted on random
// data, made the stem's one border output a row cost a third of the row.)
template <typename scalar_t, typename acc_t>
acc_t border_max(const scalar_t* plane, int64_t W, Range rh, Range rw, int64_t dh, int64_t dw) {
  acc_t best = lowest_value<acc_t>();
  bool nan = false;
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = rw.begin; w < rw.end; w += dw) {
      const acc_t v = static_cast<acc_t>(plane[h * W + w]);
      best = v > best ? v : best;
      nan |= v != v;
    }
  }
  if (nan) {
    int64_t arg;
    max_pool_scan(plane, W, int64_t(1), W, rh, rw, dh, dw, best, arg);
  }
  return best;
}

// NCHW: one task per output row. Outputs whose window lies inside [0, W) are
// swept first, kV at a time (row_blocks); the border outputs, and rows with
// fewer than kV such outputs, then use the shared scalar scan (border_max for
// values only). Float, half and bfloat16 take eight-float blocks (at stride 1
// or 2 queued across rows, max_blocks8; above 2 their rows are phased),
// sixteen with AVX-512, at stride 2 with taps in pairs two blocks at a time
// (max_blocks_pairs16), and planes whose rows are too short for a block go
// eight planes at a time, a lane per plane (plane_groups).
template <typename scalar_t, typename index_t, typename out_t, bool kIdx>
void forward_nchw(const scalar_t* x, scalar_t* y, out_t* idx, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kTaps = std::is_same_v<out_t, uint8_t>;
  constexpr bool kVec = vec8::kSupported<scalar_t> && std::is_same_v<index_t, int32_t>;
  constexpr int kV = kVec ? 8 : 128 / sizeof(acc_t);
  const bool phased = kVec && g.sw > 2;
  const bool pairs = tap_pairs(g);
  const Range inner = inner_columns(g);
  // Rows of 16 inner outputs or more take sixteen-float blocks with AVX-512.
  const bool wide = kVec && avx512_enabled() && inner.end - inner.begin >= 16;
  // Stride-2 rows of 8 or more such outputs whose taps load in pairs take blocks of sixteen (max_blocks_pairs16).
  const bool pairs16 = kVec && avx512_enabled() && inner.end - inner.begin >= 8 && g.sw == 2 && pairs;
  const int64_t x_size = g.N * g.C * g.H * g.W;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.OW * g.kh * g.kw));
  std::vector<Range> rows(g.OH), cols(g.OW);  // the windows, once for all planes
  for (int64_t oh = 0; oh < g.OH; ++oh) rows[oh] = max_pool_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh);
  for (int64_t ow = 0; ow < g.OW; ++ow) cols[ow] = max_pool_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw);
  if constexpr (kVec) {
    if (inner.end - inner.begin < kV && g.H * g.W <= kPlaneGroupMaxHW) {  // rows too short: a lane per plane
      const int64_t OHW = g.OH * g.OW;
      plane_groups(x, g.N * g.C, g.H * g.W, OHW, OHW * g.kh * g.kw, [&](const float* block, int64_t p0, int64_t lanes,
                                                                        vec8::f32x8* best, vec8::i32x8* arg) {
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const Range rh = rows[oh];
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const Range rw = cols[ow];
            const int64_t o = oh * g.OW + ow;
            best[o] = vec8::broadcast(lowest_value<float>());
            arg[o] = vec8::broadcast(-1);
            if (!rh.empty() && !rw.empty()) block_window_max(block, g.W, rh, rw, best[o], arg[o], g.dh, g.dw);
          }
        }
        store_plane_group(best, OHW, lanes, y + p0 * OHW);
        if constexpr (kIdx && kTaps) {
          for (int64_t o = 0; o < OHW; ++o) {
            for (int64_t l = 0; l < lanes; ++l) {
              idx[(p0 + l) * OHW + o] = max_pool_store<out_t>(arg[o][l], o / g.OW, o % g.OW, g);
            }
          }
        } else if constexpr (kIdx) {
          store_plane_group(arg, OHW, lanes, idx + p0 * OHW);
        }
      });
      return;
    }
  }
  const index_t row_step = static_cast<index_t>(kTaps ? g.kw : g.dh * g.W);
  const index_t tap_step = static_cast<index_t>(kTaps ? 1 : g.dw);
  const index_t out_step = static_cast<index_t>(g.sw);
  // Stride 1 or 2 in eight-float registers, where AVX-512 takes none of the
  // rows: every row's inner outputs go to max_blocks8 four blocks at a time,
  // from a plan made once for all planes (the generic row below, a block
  // call or two a row, spent more on the row than on its taps in VGG's 28x28).
  const bool blocks8 = kVec && g.sw <= 2 && inner.end - inner.begin >= 8 && !wide && !pairs16;
  std::vector<RowPlan> plan = blocks8 ? row_plans(g, rows, inner) : std::vector<RowPlan>{};
  const auto border = [&](const scalar_t* plane, int64_t oh, int64_t r, bool sweep) {
    const Range rh = rows[oh];
    scalar_t* yrow = y + r * g.OW;
    out_t* irow = kIdx ? idx + r * g.OW : nullptr;
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      if (sweep && ow == inner.begin) ow = inner.end;
      if (ow == g.OW) break;
      if constexpr (!kIdx) {
        yrow[ow] = static_cast<scalar_t>(border_max<scalar_t, acc_t>(plane, g.W, rh, cols[ow], g.dh, g.dw));
        continue;
      }
      acc_t b;
      int64_t a;
      max_pool_scan(plane, g.W, int64_t(1), g.W, rh, cols[ow], g.dh, g.dw, b, a);
      yrow[ow] = static_cast<scalar_t>(b);
      if (kIdx) irow[ow] = max_pool_store<out_t>(a, oh, ow, g);
    }
  };
  at::parallel_for(0, g.N * g.C * g.OH, grain, [&](int64_t begin, int64_t end) {
    if constexpr (kVec) {
      if (blocks8) {
        const auto flush = [&]<int kB>(const RowBlock8<scalar_t>* blocks, int64_t nrows, Step<kB>) {
          g.sw == 1 ? max_blocks8<kB, 1, kIdx, kTaps>(blocks, g.dh * g.W, nrows, g.kw, g.dw, pairs, row_step,
                                                     tap_step, y, idx)
                    : max_blocks8<kB, 2, kIdx, kTaps>(blocks, g.dh * g.W, nrows, g.kw, g.dw, pairs, row_step,
                                                     tap_step, y, idx);
        };
        const auto first = [&](int64_t, const RowPlan& p) { return kTaps ? p.th0 * g.kw : p.src; };
        return queued_rows8(x, begin, end, g, plan, inner, flush, [](int64_t, const RowPlan& p) { return p.nrows; },
                            first, kTaps ? 0 : g.sw, border);
      }
    }
    auto phase = phase_rows<acc_t>(g, phased);
    const int64_t ahead = rows_ahead(g, sizeof(scalar_t));
    nchw_output_rows(x, begin, end, g, [&](const scalar_t* plane, int64_t oh, int64_t r) {
      const Range rh = rows[oh];
      scalar_t* yrow = y + r * g.OW;
      out_t* irow = kIdx ? idx + r * g.OW : nullptr;
      const bool sweep = !rh.empty() && inner.end - inner.begin >= kV;
      if (sweep) [&] {  // the inner outputs first, as in avg_pool2d's forward_nchw
        const int64_t nrows = g.dh == 1 ? rh.end - rh.begin : (rh.end - rh.begin + g.dh - 1) / g.dh;
        const int64_t th0 = (rh.begin - (oh * g.sh - g.ph)) / g.dh;  // tap row of the first in-range row
#if defined(__x86_64__)
        if constexpr (kVec) {
          if (pairs16 && (kIdx || sizeof(scalar_t) == 2 || !wide)) {  // float32 values of wide rows: no faster
            const scalar_t* src = plane + rh.begin * g.W;
            const int64_t o = inner.begin, n = inner.end - inner.begin, rs = g.dh * g.W;
            prefetch_rows_ahead(src, g, ahead);
            src += o * 2 - g.pw;
            const int32_t first = static_cast<int32_t>(kTaps ? th0 * g.kw : rh.begin * g.W + o * 2 - g.pw);
            if (n >= 16) {
              blocks_by<16, 2>(n, [&]<int kB>(int64_t c0, Step<kB>) {
                max_blocks_pairs16<kB, kIdx, kTaps>(src, rs, nrows, g.kw, c0, first, row_step, yrow + o,
                                                    kIdx ? irow + o : nullptr);
              });
              return;
            }
            // A short row: one block of sixteen, n of them kept. Its loads reach
            // 2 * 16 + kw - 2 elements on, inside the tensor but for its last rows.
            if ((src - x) + (nrows - 1) * rs + 30 + g.kw <= x_size) {
              scalar_t yb[16];
              out_t ib[16];
              max_blocks_pairs16<1, kIdx, kTaps>(src, rs, nrows, g.kw, 0, first, row_step, yb, ib);
              std::copy_n(yb, n, yrow + o);
              if (kIdx) std::copy_n(ib, n, irow + o);
              return;
            }
          }
          if (wide) {
            row_blocks<16>(plane + rh.begin * g.W, nrows, g, inner, phased, phase, ahead,
                           [&]<int kStep>(int64_t c0, const auto& at, Step<kStep>, int64_t step) {
              const int32_t first = static_cast<int32_t>(kTaps ? th0 * g.kw : rh.begin * g.W + c0 * g.sw - g.pw);
              max_row_vec16<kStep, kIdx, kTaps>(at, step, pairs, nrows, g.kw, first, row_step, tap_step, out_step,
                                                yrow + c0, kIdx ? irow + c0 : nullptr);
            });
            return;
          }
        }
#endif
        row_blocks<kV>(plane + rh.begin * g.W, nrows, g, inner, phased, phase, ahead,
                       [&]<int kStep>(int64_t c0, const auto& at, Step<kStep>, int64_t step) {
          const index_t first = static_cast<index_t>(kTaps ? th0 * g.kw : rh.begin * g.W + c0 * g.sw - g.pw);
          out_t* ib = kIdx ? irow + c0 : nullptr;
          if constexpr (kVec) {
            max_row_vec8<kStep, kIdx, kTaps>(at, step, pairs, nrows, g.kw, first, row_step, tap_step, out_step,
                                             yrow + c0, ib);
          } else {
            max_row_block<kV, kStep, kIdx, kTaps, acc_t>(at, step, nrows, g.kw, first, row_step, tap_step, out_step,
                                                         yrow + c0, ib);
          }
        });
      }();
      border(plane, oh, r, sweep);
    });
  });
}

// One tap applied to n consecutive channels: each takes v where max_pool_takes.
template <bool kIdx, typename scalar_t, typename acc_t, typename index_t>
inline void max_tap(const scalar_t* src, int64_t n, acc_t* best, index_t* arg, index_t pos) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[j]);
    const bool take = max_pool_takes(v, best[j]);
    best[j] = take ? v : best[j];
    if (kIdx) arg[j] = take ? pos : arg[j];
  }
}

// NHWC, one block of channels of one output pixel. kB > 0 fixes the block
// width so the running maxima stay in vector registers across the taps;
// kB == 0 handles the tail of n < block channels through L1.
template <int kB, bool kIdx, typename scalar_t, typename index_t, typename out_t>
inline void nhwc_block(const scalar_t* xn, scalar_t* y, out_t* idx, const Pool2dGeom& g, Range rh, Range rw,
                       index_t first, int64_t th0, int64_t tw0, int64_t n, int64_t ahead) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kTaps = std::is_same_v<out_t, uint8_t>;
  constexpr int64_t kCap = kB > 0 ? kB : kLanes;
  const int64_t m = kB > 0 ? kB : n;
  acc_t best[kCap];
  index_t arg[kCap];
  // Start from the first tap rather than -inf (same result: the first tap
  // always replaces -inf unless it is -inf itself): a constant fill of the
  // block can turn into a slow memset instead of staying in registers.
  const bool empty = rh.empty() || rw.empty();
  if constexpr (kB > 0 && vec8::kSupported<scalar_t> && sizeof(index_t) == 4) {
    if (!empty) {
      const auto id = [&](int64_t h, int64_t w, int64_t th, int64_t tw) {
        return int32_t(kTaps ? (th0 + th) * g.kw + tw0 + tw : h * g.W + w);
      };
#if defined(__x86_64__)
      if (avx512_enabled()) return nhwc_window_max16<kB, kIdx>(xn, g.W, g.C, rh, rw, g.dh, g.dw, y, idx, id, ahead);
#endif
      return nhwc_window_max8<kB, kIdx>(xn, g.W, g.C, rh, rw, g.dh, g.dw, y, idx, id, ahead);
    }
  }
  const scalar_t* src0 = xn + (rh.begin * g.W + rw.begin) * g.C;
  if (kB > 0) prefetch_block<kB * sizeof(scalar_t)>(src0 + ahead);
  for (int64_t j = 0; j < m; ++j) {
    best[j] = empty ? lowest_value<acc_t>() : static_cast<acc_t>(src0[j]);
    arg[j] = first;
  }
  for (int64_t h = rh.begin, th = th0; h < rh.end; h += g.dh, ++th) {
    for (int64_t w = rw.begin, tw = tw0; w < rw.end; w += g.dw, ++tw) {
      if (h == rh.begin && w == rw.begin) continue;
      const int64_t pos = h * g.W + w;
      if (kB > 0) prefetch_block<kB * sizeof(scalar_t)>(xn + pos * g.C + ahead);
      max_tap<kIdx>(xn + pos * g.C, m, best, arg, static_cast<index_t>(kTaps ? th * g.kw + tw : pos));
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    y[j] = static_cast<scalar_t>(best[j]);
    if (kIdx) idx[j] = static_cast<out_t>(arg[j]);
  }
}

// NHWC: one task per output pixel, all channels swept together per tap.
template <typename scalar_t, typename index_t, typename out_t, bool kIdx>
void forward_nhwc(const scalar_t* x, scalar_t* y, out_t* idx, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kB = 128 / sizeof(acc_t);  // running maxima kept in AVX2 registers
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.C * g.kh * g.kw));
  const bool next_rows = prefetch_below(g, sizeof(scalar_t));
  const int64_t ahead = next_rows ? 0 : prefetch_ahead(g.sw * g.C, sizeof(scalar_t));
  at::parallel_for(0, g.N * g.OH * g.OW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ow = p % g.OW;
      const int64_t oh = (p / g.OW) % g.OH;
      const scalar_t* xn = x + (p / (g.OW * g.OH)) * g.H * g.W * g.C;
      const Range rh = max_pool_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh);
      const Range rw = max_pool_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw);
      if (next_rows) prefetch_rows_below(xn, g, rh, rw);
      const int64_t first_index = (rh.empty() || rw.empty()) ? -1 : rh.begin * g.W + rw.begin;
      const index_t first = static_cast<index_t>(max_pool_store<out_t>(first_index, oh, ow, g));
      const int64_t th0 = (rh.begin - (oh * g.sh - g.ph)) / g.dh;  // taps of the first in-range element
      const int64_t tw0 = (rw.begin - (ow * g.sw - g.pw)) / g.dw;
      out_t* ip = kIdx ? idx + p * g.C : nullptr;
      int64_t c0 = 0;
      for (; c0 + kB <= g.C; c0 += kB) {
        nhwc_block<kB, kIdx>(xn + c0, y + p * g.C + c0, ip + c0, g, rh, rw, first, th0, tw0, kB, ahead);
      }
      for (; c0 < g.C; c0 += kLanes) {
        nhwc_block<0, kIdx>(xn + c0, y + p * g.C + c0, ip + c0, g, rh, rw, first, th0, tw0, std::min(kLanes, g.C - c0),
                            ahead);
      }
    }
  });
}

void launch_forward(const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices, const Pool2dGeom& g,
                    bool channels_last) {
  // Indices are tracked in 32 bits (twice the vector lanes) when the plane allows.
  const bool narrow = g.H * g.W <= std::numeric_limits<int32_t>::max();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    if (!indices.defined()) {
      channels_last ? forward_nhwc<scalar_t, int32_t, int64_t, false>(xp, yp, nullptr, g)
                    : forward_nchw<scalar_t, int32_t, int64_t, false>(xp, yp, nullptr, g);
    } else if (indices.scalar_type() == at::kByte) {
      uint8_t* tp = indices.mutable_data_ptr<uint8_t>();
      channels_last ? forward_nhwc<scalar_t, int32_t, uint8_t, true>(xp, yp, tp, g)
                    : forward_nchw<scalar_t, int32_t, uint8_t, true>(xp, yp, tp, g);
    } else if (narrow) {
      int64_t* ip = indices.mutable_data_ptr<int64_t>();
      channels_last ? forward_nhwc<scalar_t, int32_t, int64_t, true>(xp, yp, ip, g)
                    : forward_nchw<scalar_t, int32_t, int64_t, true>(xp, yp, ip, g);
    } else {
      int64_t* ip = indices.mutable_data_ptr<int64_t>();
      channels_last ? forward_nhwc<scalar_t, int64_t, int64_t, true>(xp, yp, ip, g)
                    : forward_nchw<scalar_t, int64_t, int64_t, true>(xp, yp, ip, g);
    }
  });
}

void launch_backward(const at::Tensor& gout, const at::Tensor& idx, const at::Tensor& gin, const Pool2dGeom& g,
                     bool channels_last) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "max_pool2d_backward", [&] {
    const scalar_t* gp = gout.const_data_ptr<scalar_t>();
    scalar_t* out = gin.mutable_data_ptr<scalar_t>();
    if (idx.scalar_type() == at::kByte) {
      argmax_backward(gp, idx.const_data_ptr<uint8_t>(), out, g, channels_last, "max_pool2d_backward", true);
    } else {
      argmax_backward(gp, idx.const_data_ptr<int64_t>(), out, g, channels_last, "max_pool2d_backward", true);
    }
  });
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CPU, m) {
  using Entries = poolops::MaxPool2dEntries<&poolops::launch_forward, &poolops::launch_backward>;
  m.impl("max_pool2d_with_indices", &Entries::with_indices);
  m.impl("max_pool2d", &Entries::values);
  m.impl("max_pool2d_with_taps", &Entries::with_taps);
  m.impl("_max_pool2d_backward", &Entries::backward);
}
