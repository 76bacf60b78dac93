// Loops shared by the CPU pooling kernels. Backwards keep the summation order
// of ATen's CPU scatter (output row-major per input element), are
// deterministic and use no atomics: every task owns a disjoint part of
// grad_input.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../pool_math.h"
#include "gemm.h"
#include "vec16.h"
#include "vec8.h"

namespace poolops {

constexpr int64_t kLanes = 256;  // channels (NHWC) or outputs (NCHW) handled together through L1

// NHWC window loops read several pixels a tap apart in blocks of channels,
// a pattern the hardware prefetcher follows poorly: each tap prefetches its
// block about 4 KiB ahead in the row (measured 2x on (32,512,28,28) 2/2).
inline int64_t prefetch_ahead(int64_t step, int64_t elem_size) {
  const int64_t bytes = std::max<int64_t>(1, step * elem_size);
  return (4096 + bytes - 1) / bytes * step;
}

// The cache lines of `bytes` bytes from p (kBytes > 0 fixes the count), into
// every cache level (kLocality 3) or L2 and below (2).
template <int64_t kBytes, int kLocality = 3>
inline void prefetch_block(const void* p, int64_t bytes = kBytes) {
  const int64_t n = kBytes > 0 ? kBytes : bytes;
#pragma GCC unroll 8
  for (int64_t l = 0; l < n; l += 64) __builtin_prefetch(static_cast<const char*>(p) + l, 0, kLocality);
}

// Tensors this large are taken to be read from, or written to, memory rather than the cache.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// Whether a kernel writes its output in pieces of piece_bytes (NHWC pixels,
// NCHW planes) from y with non-temporal stores: outputs too large to stay in
// the cache, with every piece aligned. Skipping the read of each written line took
// DenseNet's NHWC float average pool from 2.2 to 1.75 ms.
inline bool stream_output(const void* y, int64_t bytes, int64_t piece_bytes) {
  return bytes >= kStreamBytes && reinterpret_cast<uintptr_t>(y) % 32 == 0 && piece_bytes % 32 == 0;
}

// Whether the NHWC window loops prefetch per output the rows below its window
// (prefetch_rows_below) rather than each tap its block about 4 KiB on: for
// windows overlapping along H over an input read from memory (ResNet's stem
// max pool, bfloat16: 2.15 -> 1.86 ms; with indices 3.9 -> 3.4; avg 2.05 ->
// 1.6). Without overlap the rows below made VGG's late 2/2 max pool twice as slow.
inline bool prefetch_below(const Pool2dGeom& g, int64_t elem_size) {
  return g.N * g.H * g.W * g.C * elem_size >= kStreamBytes && g.kh > g.sh;
}

// Into L1: the rows below the window rh x rw of an NHWC image that the next
// output row reads, at the window's last g.sw columns (those the output to its
// left did not read). Always inlined: called per output, a plain inline
// function made ResNet's stem slower than no prefetch (2.7 against 2.15 ms).
template <typename scalar_t>
__attribute__((always_inline)) inline void prefetch_rows_below(const scalar_t* xn, const Pool2dGeom& g, Range rh,
                                                               Range rw) {
  if (rw.empty()) return;
  const int64_t w = std::max(rw.begin, rw.end - g.sw), bytes = (rw.end - w) * g.C * int64_t(sizeof(scalar_t));
  for (int64_t h = rh.end; h < std::min(g.H, rh.end + g.sh); ++h) prefetch_block<0>(xn + (h * g.W + w) * g.C, bytes);
}

// The outputs along W whose whole window lies inside [0, W): NCHW kernels
// sweep these tap by tap across a row, the few others one by one.
inline Range inner_columns(const Pool2dGeom& g) {
  const int64_t lo = std::min(g.OW, (g.pw + g.sw - 1) / g.sw);
  const int64_t last_start = g.W - 1 - (g.kw - 1) * g.dw + g.pw;
  return {lo, std::max(lo, std::min(g.OW, last_start < 0 ? 0 : last_start / g.sw + 1))};
}

// Input columns w0, w0 + 1, ... of one row split by phase modulo `step`
// (column w0 + q * step + p at phase p, slot q) and widened to acc_t, so that
// each tap of a run of outputs `step` apart reads a unit-stride slice: the
// NCHW sweeps then vectorise for any stride and dtype. Values are unchanged.
template <typename acc_t>
class PhaseRow {
 public:
  PhaseRow(int64_t step, int64_t max_cols) : step_(step), ld_(max_cols / step + 1), buf_(step * ld_) {}

  template <typename scalar_t>
  void fill(const scalar_t* src, int64_t cols) {
    for (int64_t p = 0; p < std::min(step_, cols); ++p) {
      const int64_t n = (cols - p + step_ - 1) / step_;
      acc_t* dst = buf_.data() + p * ld_;
      if (step_ == 1) {
        for (int64_t q = 0; q < n; ++q) dst[q] = static_cast<acc_t>(src[q]);
      } else if (step_ == 2) {
        for (int64_t q = 0; q < n; ++q) dst[q] = static_cast<acc_t>(src[2 * q + p]);
      } else {
        for (int64_t q = 0; q < n; ++q) dst[q] = static_cast<acc_t>(src[q * step_ + p]);
      }
    }
  }

  // The slice of tap offset o: columns w0 + o, w0 + o + step, ...
  const acc_t* at(int64_t o) const { return buf_.data() + (o % step_) * ld_ + o / step_; }

 private:
  int64_t step_, ld_;
  std::vector<acc_t> buf_;
};

// NCHW planes too small for row sweeps, eight at a time with a lane per
// plane: each group of planes is transposed into an (H * W, 8) float block
// (missing planes of the last group read as 0), and fn(block, p0, lanes, val,
// arg) computes the OHW outputs of planes p0 .. p0 + lanes - 1 from it, eight
// floats per pixel, into val[o] (and for max arg[o]), o < OHW, lane l for
// plane p0 + l; store_plane_group writes them out. Float, half and bfloat16 only.
constexpr int64_t kPlaneGroupMaxHW = 2048;  // a 64 KiB block

template <typename scalar_t, typename Fn>
void plane_groups(const scalar_t* x, int64_t planes, int64_t HW, int64_t OHW, int64_t cost_per_plane, const Fn& fn) {
  const int64_t groups = (planes + 7) / 8;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, 8 * cost_per_plane));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> block(HW * 8);
    std::vector<vec8::f32x8> val(OHW);
    std::vector<vec8::i32x8> arg(OHW);
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t p0 = gi * 8;
      const int64_t lanes = std::min<int64_t>(8, planes - p0);
      int64_t i = 0;
      for (; i + 8 <= HW; i += 8) {  // 8x8 tiles transposed in registers
        vec8::f32x8 tile[8];
        for (int64_t l = 0; l < 8; ++l) tile[l] = l < lanes ? vec8::load<1>(x + (p0 + l) * HW + i, 1) : vec8::f32x8{};
        vec8::transpose8(tile);
        for (int64_t k = 0; k < 8; ++k) vec8::store(block.data() + (i + k) * 8, tile[k]);
      }
      for (; i < HW; ++i) {
        for (int64_t l = 0; l < 8; ++l) block[i * 8 + l] = l < lanes ? static_cast<float>(x[(p0 + l) * HW + i]) : 0.0f;
      }
      fn(static_cast<const float*>(block.data()), p0, lanes, val.data(), arg.data());
    }
  });
}

// Writes lane l of v[o] (o < OHW, l < lanes) to y[l * OHW + o], the inverse
// of plane_groups' transpose: floats rounded to T, indices widened to int64.
template <typename T, typename V>
void store_plane_group(const V* v, int64_t OHW, int64_t lanes, T* y) {
  const auto put = [](T* p, V r) {
    if constexpr (std::is_same_v<V, vec8::i32x8>) {
      vec8::store_index(p, r);
    } else {
      vec8::store(p, r);
    }
  };
  if (OHW == 1 && lanes == 8) return put(y, v[0]);
  int64_t o = 0;
  for (; o + 8 <= OHW; o += 8) {
    vec8::f32x8 tile[8];
    for (int k = 0; k < 8; ++k) tile[k] = vec8::bit_cast<vec8::f32x8>(v[o + k]);
    vec8::transpose8(tile);
    for (int64_t l = 0; l < lanes; ++l) put(y + l * OHW + o, vec8::bit_cast<V>(tile[l]));
  }
  for (; o < OHW; ++o) {
    for (int64_t l = 0; l < lanes; ++l) y[l * OHW + o] = static_cast<T>(v[o][l]);
  }
}

// One tap (h, w) of a plane_groups block in the max scan, lane by lane.
inline void block_window_step(const float* block, int64_t W, int64_t h, int64_t w, vec8::f32x8& best,
                              vec8::i32x8& arg) {
  const vec8::f32x8 v = vec8::load<1>(block + (h * W + w) * 8, 1);
  const vec8::i32x8 take = vec8::takes(v, best);
  best = take ? v : best;
  arg = take ? vec8::broadcast(static_cast<int32_t>(h * W + w)) : arg;
}

// Over the non-empty window rh x rw (taps dh and dw apart) of a plane_groups
// block, lane by lane: the max and its index h * W + w (max_pool_takes in
// row-major order), or the sum in row-major order.
inline void block_window_max(const float* block, int64_t W, Range rh, Range rw, vec8::f32x8& best,
                             vec8::i32x8& arg, int64_t dh = 1, int64_t dw = 1) {
  best = vec8::broadcast(lowest_value<float>());
  arg = vec8::broadcast(static_cast<int32_t>(rh.begin * W + rw.begin));
  const int64_t row_taps = (rw.end - rw.begin + dw - 1) / dw;
  if (row_taps < 8) {
    for (int64_t h = rh.begin; h < rh.end; h += dh) {
      for (int64_t w = rw.begin; w < rw.end; w += dw) block_window_step(block, W, h, w, best, arg);
    }
    return;
  }
  // Long rows: four scans over interleaved taps (one serial compare-and-blend
  // chain was latency bound: 7x7 global max took 1.7x as long), merged by
  // vec8::merge_max.
  vec8::f32x8 b[4] = {best, best, best, best};
  vec8::i32x8 a[4] = {arg, arg, arg, arg};
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    int64_t w = rw.begin;
    for (; w + 3 * dw < rw.end; w += 4 * dw) {
      for (int j = 0; j < 4; ++j) block_window_step(block, W, h, w + j * dw, b[j], a[j]);
    }
    for (; w < rw.end; w += dw) block_window_step(block, W, h, w, b[0], a[0]);
  }
  vec8::merge_max(b[0], a[0], b[1], a[1]);
  vec8::merge_max(b[2], a[2], b[3], a[3]);
  vec8::merge_max(b[0], a[0], b[2], a[2]);
  best = b[0];
  arg = a[0];
}

inline vec8::f32x8 block_window_sum(const float* block, int64_t W, Range rh, Range rw, int64_t dh = 1,
                                    int64_t dw = 1) {
  vec8::f32x8 sum = vec8::broadcast(0.0f);
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = rw.begin; w < rw.end; w += dw) sum += vec8::load<1>(block + (h * W + w) * 8, 1);
  }
  return sum;
}

// Compile-time input step of a row block's outputs (0: the runtime step).
template <int kStep>
using Step = std::integral_constant<int, kStep>;

// fn(plane, oh, r) for the NCHW output rows r in [begin, end), row oh of
// `plane`: counted along, not divided out per row.
template <typename scalar_t, typename Fn>
inline void nchw_output_rows(const scalar_t* x, int64_t begin, int64_t end, const Pool2dGeom& g, const Fn& fn) {
  int64_t oh = begin % g.OH;
  const scalar_t* plane = x + (begin / g.OH) * g.H * g.W;
  for (int64_t r = begin; r < end; ++r) {
    fn(plane, oh, r);
    if (++oh == g.OH) {
      oh = 0;
      plane += g.H * g.W;
    }
  }
}

// f(t, v) for the taps t = 0 .. kw - 1 of window row r of a row block, in
// order, v holding the eight outputs' inputs (row_blocks' at and step). When
// `pairs` (tap_pairs) a stride-2 row loads its taps two at a time, and an odd
// last tap reads back into the tap before it.
inline bool tap_pairs(const Pool2dGeom& g) { return g.dw == 1 && g.kw >= 2; }

template <int kStep, typename At, typename F>
inline void for_each_tap(const At& at, int64_t r, int64_t kw, int64_t step, bool pairs, const F& f) {
  if constexpr (kStep == 2) {
    if (pairs) {
      int64_t t = 0;
      for (; t + 1 < kw; t += 2) {
        vec8::f32x8 even, odd;
        vec8::load2_pair(at(r, t), even, odd);
        f(t, even);
        f(t + 1, odd);
      }
      if (t < kw) f(t, vec8::load2_after(at(r, t)));
      return;
    }
  }
  for (int64_t t = 0; t < kw; ++t) f(t, vec8::load<kStep>(at(r, t), step));
}

// A block of eight consecutive outputs of an NCHW row swept at stride 1 or 2:
// src points at tap 0 of window row 0 of its first output, out is that
// output's offset in the output, and aux is the kernel's own (max: the first
// output's input index; avg: its offset in the divisor tables).
template <typename T>
struct RowBlock8 {
  const T* src;
  int64_t out;
  int64_t aux;
};

// Collects the row blocks of a task's rows and hands them on kB at a time,
// flush(blocks, key, Step<kB>{}) for 1 <= kB <= 4, blocks of one key (the
// window rows, say) together, so that short rows and the rest of long ones
// share calls: a call for every eight outputs of VGG's 28x28 planes, two a
// row before, cost more than their taps. drain() before the task ends.
template <typename T, typename Flush>
class RowBlockQueue8 {
 public:
  explicit RowBlockQueue8(const Flush& flush) : flush_(flush) {}
  void push(int64_t key, const T* src, int64_t out, int64_t aux) {
    if (n_ > 0 && key != key_) drain();
    key_ = key;
    blocks_[n_++] = RowBlock8<T>{src, out, aux};
    if (n_ == 4) drain();
  }
  // The row's n >= 8 outputs from out on, eight at a time, the last block
  // overlapping the one before: src steps `step` elements an output, aux aux_step.
  void push_row(int64_t key, const T* src, int64_t step, int64_t out, int64_t n, int64_t aux, int64_t aux_step) {
    for (int64_t c = 0;; c += 8) {
      c = std::min(c, n - 8);
      push(key, src + c * step, out + c, aux + c * aux_step);
      if (c == n - 8) return;
    }
  }
  void drain() {
    switch (n_) {
      case 1: flush_(blocks_, key_, Step<1>{}); break;
      case 2: flush_(blocks_, key_, Step<2>{}); break;
      case 3: flush_(blocks_, key_, Step<3>{}); break;
      case 4: flush_(blocks_, key_, Step<4>{}); break;
      default: break;
    }
    n_ = 0;
  }

 private:
  const Flush& flush_;
  RowBlock8<T> blocks_[4];
  int n_ = 0;
  int64_t key_ = 0;
};

// Per output row oh of an NCHW plane, for its inner outputs (Range inner):
// the window rows in range (nrows, 0 where none), the offset in the plane of
// the first one's tap 0 (src), and that row's tap row (th0).
struct RowPlan {
  int64_t nrows, src, th0;
};

inline std::vector<RowPlan> row_plans(const Pool2dGeom& g, const std::vector<Range>& rows, Range inner) {
  std::vector<RowPlan> plan(g.OH);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const Range rh = rows[oh];
    if (rh.empty()) continue;
    plan[oh] = RowPlan{(rh.end - rh.begin + g.dh - 1) / g.dh, rh.begin * g.W + inner.begin * g.sw - g.pw,
                       (rh.begin - (oh * g.sh - g.ph)) / g.dh};
  }
  return plan;
}

// f(b, v, r, t) for every tap (r, t), in row-major order, of kB row blocks at
// stride kStep (1, or 2 with taps in pairs where `pairs`, float taps in pair
// order: see pair_taps), v holding block b's inputs of the tap: window rows
// lie rs apart, taps dw.
template <int kB, int kStep, typename T, typename F>
__attribute__((always_inline)) inline void for_each_tap_blocks8(const RowBlock8<T>* blocks, int64_t rs, int64_t rows,
                                                               int64_t kw, int64_t dw, bool pairs, const F& f) {
  const T* src[kB];
#pragma GCC unroll 4
  for (int b = 0; b < kB; ++b) src[b] = blocks[b].src;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * rs;
    if (kStep == 2 && pairs) {
      int64_t t = 0;
      for (; t + 1 < kw; t += 2) {
        for (int b = 0; b < kB; ++b) {
          vec8::f32x8 even, odd;
          vec8::pair_taps(src[b] + row + t, even, odd);
          f(b, even, r, t);
          f(b, odd, r, t + 1);
        }
      }
      if (t < kw) {
        for (int b = 0; b < kB; ++b) f(b, vec8::pair_tap(src[b] + row + t), r, t);
      }
    } else {
      for (int64_t t = 0; t < kw; ++t) {
        for (int b = 0; b < kB; ++b) f(b, vec8::load<kStep>(src[b] + row + t * dw, kStep), r, t);
      }
    }
  }
}

// Output rows read an NCHW plane in order, sh rows each: prefetch the rows
// about 4 KiB on from src (rows wider than ~120 floats otherwise ran at a
// third of the bandwidth, the hardware prefetcher falling behind). `ahead`
// is rows_ahead's, computed once: its division, done for every row, took an
// eighth of VGG's 28x28 max pool.
inline int64_t rows_ahead(const Pool2dGeom& g, int64_t elem_size) { return prefetch_ahead(g.sh * g.W, elem_size); }

template <typename scalar_t>
inline void prefetch_rows_ahead(const scalar_t* src, const Pool2dGeom& g, int64_t ahead) {
  prefetch_block<0>(src + ahead, g.sh * g.W * int64_t(sizeof(scalar_t)));
}

// A task's NCHW output rows [begin, end) in row blocks (RowBlockQueue8): each
// row's inner outputs (plan: row_plans') pushed under key(oh, p), their aux
// starting at aux(oh, p) and stepping aux_step an output, then border(plane,
// oh, r, swept) for the rest of the row's outputs.
template <typename T, typename Flush, typename Key, typename Aux, typename Border>
void queued_rows8(const T* x, int64_t begin, int64_t end, const Pool2dGeom& g, const std::vector<RowPlan>& plan,
                  Range inner, const Flush& flush, const Key& key, const Aux& aux, int64_t aux_step,
                  const Border& border) {
  RowBlockQueue8<T, Flush> queue(flush);
  const int64_t ahead = rows_ahead(g, sizeof(T));
  const bool edges = inner.begin > 0 || inner.end < g.OW;
  nchw_output_rows(x, begin, end, g, [&](const T* plane, int64_t oh, int64_t r) {
    const RowPlan& p = plan[oh];
    if (p.nrows > 0) {
      prefetch_rows_ahead(plane + p.src, g, ahead);
      queue.push_row(key(oh, p), plane + p.src, g.sw, r * g.OW + inner.begin, inner.end - inner.begin, aux(oh, p),
                     aux_step);
    }
    if (edges || p.nrows == 0) border(plane, oh, r, p.nrows > 0);
  });
  queue.drain();
}

#if defined(__x86_64__)
// take(b, v, r, t) for every tap (r, t), in row-major order, of kB blocks of
// sixteen consecutive outputs of one NCHW row at stride 2 whose taps load in
// pairs (tap_pairs): v holds block b's inputs of the tap. row points at tap 0
// of window row 0 of the first output; window rows lie rs apart.
template <int kB, typename T, typename Take>
__attribute__((target("avx512f"))) inline void for_each_pair_tap16(const T* row, int64_t rs, int64_t rows,
                                                                   int64_t kw, const Take& take) {
  for (int64_t r = 0; r < rows; ++r, row += rs) {
    int64_t t = 0;
    for (; t + 1 < kw; t += 2) {
      for (int b = 0; b < kB; ++b) {
        __m512 even, odd;
        vec16::load2_pair(row + 32 * b + t, even, odd);
        take(b, even, r, t);
        take(b, odd, r, t + 1);
      }
    }
    if (t < kw) {
      for (int b = 0; b < kB; ++b) take(b, vec16::load2_after(row + 32 * b + t), r, t);
    }
  }
}
#endif

// Blocks of kV outputs over [0, n), n >= kV, up to kB at a time for the
// instruction-level parallelism: block(c0, Step<k>{}) computes the k blocks
// from c0 on; the last run ends at n, overlapping the blocks before it.
template <int kV, int kB, typename Block>
inline void blocks_by(int64_t n, const Block& block) {
  const auto run = [&]<int k>(auto& self, int64_t c0, int m, Step<k>) -> void {
    if constexpr (k > 0) {
      if (m == k) return block(c0, Step<k>{});
      self(self, c0, m, Step<k - 1>{});
    }
  };
  int64_t c0 = 0;
  for (; c0 + kB * kV <= n; c0 += kB * kV) block(c0, Step<kB>{});
  if (c0 == n) return;
  const int m = static_cast<int>((n - c0 + kV - 1) / kV);
  if (m * kV <= n) return run(run, n - m * kV, m, Step<kB>{});
  run(run, 0, m - 1, Step<kB>{});  // n < m * kV: fewer than kB * kV outputs in all
  block(n - kV, Step<1>{});
}

// The inner outputs of one NCHW output row in blocks of kV (the last one
// overlapping the one before; the range must hold at least kV outputs).
// block(c0, at, Step<kStep>{}, step) computes outputs c0 .. c0 + kV - 1, where
// at(i, t) points at the input of tap t in window row i (input row
// src + i * dh * W) for output c0, the other outputs `step` apart. Phased rows
// are first widened and split by stride phase into `phase`, one PhaseRow per
// window row, so that every tap reads unit-stride acc_t.
template <int kV, typename acc_t, typename scalar_t, typename Block>
inline void row_blocks(const scalar_t* src, int64_t rows, const Pool2dGeom& g, Range inner, bool phased,
                       std::vector<PhaseRow<acc_t>>& phase, int64_t ahead, const Block& block) {
  const int64_t rs = g.dh * g.W;
  // prefetch_rows_ahead written out: called here, the float32 'same' max pool
  // ran 1.1x to 1.5x slower as GCC 12 compiled it (measured, unexplained).
  prefetch_block<0>(src + ahead, g.sh * g.W * int64_t(sizeof(scalar_t)));
  for (int64_t b0 = inner.begin; b0 < inner.end; b0 += kLanes) {
    // A chunk of up to kLanes outputs (the PhaseRow capacity); a short last one reaches back.
    const int64_t b1 = std::min(inner.end, b0 + kLanes);
    const int64_t lo = std::min(b0, b1 - kV);
    if (phased) {
      for (int64_t i = 0; i < rows; ++i) {
        phase[i].fill(src + i * rs + lo * g.sw - g.pw, (b1 - lo - 1) * g.sw + (g.kw - 1) * g.dw + 1);
      }
    }
    for (int64_t c = lo; c < b1; c += kV) {
      const int64_t c0 = std::min(c, b1 - kV);
      const scalar_t* first = src + c0 * g.sw - g.pw;
      const auto direct = [&](int64_t i, int64_t t) { return first + i * rs + t * g.dw; };
      if (phased) {
        block(c0, [&, off = c0 - lo](int64_t i, int64_t t) { return phase[i].at(t * g.dw) + off; }, Step<1>{}, 1);
      } else if (g.sw == 1) {
        block(c0, direct, Step<1>{}, 1);
      } else if (g.sw == 2) {
        block(c0, direct, Step<2>{}, 2);
      } else {
        block(c0, direct, Step<0>{}, g.sw);
      }
    }
  }
}

// PhaseRows for row_blocks: one per window row when `phased`, else none.
template <typename acc_t>
std::vector<PhaseRow<acc_t>> phase_rows(const Pool2dGeom& g, bool phased) {
  if (!phased) return {};
  return std::vector<PhaseRow<acc_t>>(g.kh, PhaseRow<acc_t>(g.sw, (kLanes - 1) * g.sw + (g.kw - 1) * g.dw + 1));
}

// For every input position, the outputs whose window covers it. Windows are
// monotone in the output index, so each is a contiguous range.
inline std::vector<Range> covering_ranges(const std::vector<Range>& windows, int64_t in) {
  std::vector<Range> cover(in, Range{0, 0});
  for (int64_t o = 0; o < static_cast<int64_t>(windows.size()); ++o) {
    for (int64_t i = windows[o].begin; i < windows[o].end; ++i) {
      cover[i] = cover[i].empty() ? Range{o, o + 1} : Range{cover[i].begin, o + 1};
    }
  }
  return cover;
}

// Stride-2 column windows of adjacent taps in a backward scatter, gathered
// instead: the outputs covering column 2m + ph are m + [lo[ph], hi[ph]] for
// every m of the run [m0, m1) (checked against covering_ranges), so eight
// such m at a time add their deltas in ascending output order, the order of
// the scatter; other columns gather their covering outputs one by one.
// (avg pool 3/2/1 NCHW backward: 4.3 -> 1.8 ms.)
struct PhaseCover {
  std::vector<Range> cover;
  int64_t lo[2] = {0, 0}, hi[2] = {0, 0}, m0 = 0, m1 = 0, W = 0;

  PhaseCover(const std::vector<Range>& cols, int64_t width, int64_t dw, bool enable) : W(width) {
    if (!enable || dw != 1 || W < 32) return;
    cover = covering_ranges(cols, W);
    const int64_t mid = W / 4;  // offsets from a column pair in the middle
    for (int ph = 0; ph < 2; ++ph) {
      lo[ph] = cover[2 * mid + ph].begin - mid;
      hi[ph] = cover[2 * mid + ph].end - mid;
    }
    const auto regular = [&](int64_t m) {
      for (int ph = 0; ph < 2; ++ph) {
        const Range c = cover[2 * m + ph];
        if (c.empty() || c.begin != m + lo[ph] || c.end != m + hi[ph]) return false;
      }
      return true;
    };
    if (!regular(mid)) return;
    m0 = m1 = mid;
    while (m0 > 0 && regular(m0 - 1)) --m0;
    while (2 * m1 + 1 < W && regular(m1)) ++m1;
    if (m1 - m0 < 8) m0 = m1 = 0;
  }
  bool active() const { return m1 > m0; }

  void add(float* row, const float* delta) const {
    const auto gather = [&](int64_t w) {
      for (int64_t ow = cover[w].begin; ow < cover[w].end; ++ow) row[w] += delta[ow];
    };
    for (int64_t w = 0; w < 2 * m0; ++w) gather(w);
    int64_t m = m0;
    for (; m + 8 <= m1; m += 8) {
      vec8::f32x8 even, odd;
      vec8::load2_pair(row + 2 * m, even, odd);
      for (int64_t o = lo[0]; o < hi[0]; ++o) even += vec8::load<1>(delta + m + o, 1);
      for (int64_t o = lo[1]; o < hi[1]; ++o) odd += vec8::load<1>(delta + m + o, 1);
      vec8::store(row + 2 * m, __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11));
      vec8::store(row + 2 * m + 8, __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15));
    }
    for (int64_t w = 2 * m; w < W; ++w) gather(w);
  }
};

// Accumulates into grad_input directly for float and double, else into a
// float scratch that is rounded once at the end.
template <typename scalar_t>
struct AccBuffer {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<acc_t, scalar_t>;
  std::vector<acc_t> scratch;
  explicit AccBuffer(int64_t n) : scratch(kDirect ? 0 : n) {}
  acc_t* zeroed(scalar_t* dst, int64_t n) {
    acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(dst) : scratch.data();
    std::fill(acc, acc + n, acc_t(0));
    return acc;
  }
  void store(scalar_t* dst, int64_t n) const {
    if constexpr (!kDirect) {
      vec8::narrow_copy(scratch.data(), dst, n);
    }
  }
};

// x / d for a fixed divisor d. When d is a power of two, x * (1 / d) is the
// same correctly rounded quotient, so the division is replaced by a multiply.
template <typename acc_t>
struct ExactDiv {
  acc_t d, inv;
  bool by_mul;
  ExactDiv() = default;
  explicit ExactDiv(acc_t divisor) : d(divisor), inv(acc_t(1) / divisor) {
    int e;
    by_mul = std::abs(std::frexp(divisor, &e)) == acc_t(0.5) && std::isnormal(inv);
  }
  // x a value or a vector of them (vec8::f32x8 for float).
  template <typename V>
  V operator()(V x) const {
    return by_mul ? x * inv : x / d;
  }
};

// Divides a gradient by one output's divisor, or by two in turn (adaptive avg).
template <typename acc_t, bool kTwo>
struct Divisor {
  ExactDiv<acc_t> a, b;
  acc_t apply(acc_t g) const { return kTwo ? b(a(g)) : a(g); }
};

// Backward of a window average: grad_input[i] is the sum, over the outputs o
// whose window rows[oh] x cols[ow] holds i, of grad_output[o] divided by
// divisor(oh, ow), added in output row-major order. Taps are dh and dw apart.
// NCHW: one task per plane scatters its outputs. NHWC: one task per input row
// adds the covering output rows, all channels at once.
template <typename scalar_t, typename DivisorFn>
void window_avg_backward(const scalar_t* gout, scalar_t* gin, const Pool2dGeom& g, const std::vector<Range>& rows,
                         const std::vector<Range>& cols, bool channels_last, const DivisorFn& divisor,
                         int64_t dh = 1, int64_t dw = 1) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!channels_last) {
    const int64_t HW = g.H * g.W;
    const int64_t OHW = g.OH * g.OW;
    // Column windows that are the pairs (2 ow, 2 ow + 1) take a loop the compiler vectorises.
    bool pairs = dw == 1;
    for (int64_t ow = 0; ow < g.OW && pairs; ++ow) pairs = cols[ow].begin == 2 * ow && cols[ow].end == 2 * ow + 2;
    const PhaseCover phases(cols, g.W, dw, std::is_same_v<acc_t, float> && !pairs);
    at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW)), [&](int64_t b, int64_t e) {
      AccBuffer<scalar_t> buf(HW);
      std::vector<acc_t> delta(g.OW);
      for (int64_t t = b; t < e; ++t) {
        acc_t* acc = buf.zeroed(gin + t * HW, HW);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const scalar_t* go = gout + t * OHW + oh * g.OW;
          for (int64_t ow = 0; ow < g.OW; ++ow) delta[ow] = divisor(oh, ow).apply(static_cast<acc_t>(go[ow]));
          for (int64_t h = rows[oh].begin; h < rows[oh].end; h += dh) {
            acc_t* row = acc + h * g.W;
            if (pairs) {
              for (int64_t ow = 0; ow < g.OW; ++ow) {
                row[2 * ow] += delta[ow];
                row[2 * ow + 1] += delta[ow];
              }
              continue;
            }
            if constexpr (std::is_same_v<acc_t, float>) {
              if (phases.active()) {
                phases.add(row, delta.data());
                continue;
              }
            }
            for (int64_t ow = 0; ow < g.OW; ++ow) {
              for (int64_t w = cols[ow].begin; w < cols[ow].end; w += dw) row[w] += delta[ow];
            }
          }
        }
        buf.store(gin + t * HW, HW);
      }
    });
    return;
  }
  const std::vector<Range> cover = covering_ranges(rows, g.H);
  const int64_t WC = g.W * g.C;
  at::parallel_for(0, g.N * g.H, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, WC)), [&](int64_t b, int64_t e) {
    AccBuffer<scalar_t> buf(WC);
    std::vector<acc_t> delta(g.C);
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / g.H;
      const int64_t h = r % g.H;
      acc_t* acc = buf.zeroed(gin + r * WC, WC);
      for (int64_t oh = cover[h].begin; oh < cover[h].end; ++oh) {
        if ((h - rows[oh].begin) % dh != 0) continue;
        const scalar_t* go = gout + (n * g.OH + oh) * g.OW * g.C;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const auto div = divisor(oh, ow);
          for (int64_t c = 0; c < g.C; ++c) delta[c] = div.apply(static_cast<acc_t>(go[ow * g.C + c]));
          for (int64_t w = cols[ow].begin; w < cols[ow].end; w += dw) {
            acc_t* px = acc + w * g.C;
            for (int64_t c = 0; c < g.C; ++c) px[c] += delta[c];
          }
        }
      }
      buf.store(gin + r * WC, WC);
    }
  });
}

// Backward. Every input element sums the gradients of the outputs that chose
// it, in output row-major order: the order of the CUDA gather and of ATen's
// CPU scatter, so fp32/fp64 results agree bit for bit. Deterministic: tasks
// write disjoint parts of grad_input, with no atomics.
//
// A stored argmax becomes a flat index in the plane without divisions: int64
// indices as they are; a tap as its window's origin (per output, `origin`)
// plus a per-tap offset. Bytes that are no tap of the window map far outside
// the plane, so one range check catches them with bad int64 indices.
template <typename stored_t>
class ArgmaxDecoder {
 public:
  static constexpr bool kTaps = std::is_same_v<stored_t, uint8_t>;
  static constexpr int64_t kOff = int64_t(1) << 48;  // no plane is this large

  explicit ArgmaxDecoder(const Pool2dGeom& g) : g_(g) {
    if constexpr (kTaps) {
      for (int64_t t = 0; t < 256; ++t) offset_[t] = t < g.kh * g.kw ? (t / g.kw) * g.dh * g.W + (t % g.kw) * g.dw : -kOff;
    }
  }
  int64_t origin(int64_t oh, int64_t ow) const {
    return kTaps ? (oh * g_.sh - g_.ph) * g_.W + ow * g_.sw - g_.pw : 0;
  }
  int64_t operator()(stored_t v, int64_t origin) const {
    if constexpr (kTaps) {
      return origin + offset_[v];
    } else {
      return v;
    }
  }
  // True for an entry that is neither in the plane nor "no argmax" (-1 or kNoTap).
  static bool bad(stored_t v) { return kTaps ? v != kNoTap : v != -1; }

 private:
  const Pool2dGeom& g_;
  std::array<int64_t, kTaps ? 256 : 1> offset_{};
};

// NCHW: one task per plane scatters its outputs into the zeroed plane (float
// and double in grad_input itself, half and bfloat16 in a float scratch).
// Small float and double planes are zeroed about 64 KiB at a time: a fill per
// 14x14 plane cost more than its scatter.
template <typename scalar_t, typename stored_t>
void backward_nchw(const scalar_t* gout, const stored_t* idx, scalar_t* gin, const Pool2dGeom& g,
                   std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<acc_t, scalar_t>;
  const int64_t HW = g.H * g.W;
  const int64_t OHW = g.OH * g.OW;
  const int64_t group = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW));
  const ArgmaxDecoder<stored_t> decode(g);
  // Large gradients are summed plane by plane in a scratch and streamed out
  // (stream_output), float too: the stem backward 4.6 -> 3.8 ms (bfloat16), 4.5 -> 4.35 ms (float).
  const bool stream = vec8::kSupported<scalar_t> &&
                      stream_output(gin, g.N * g.C * HW * int64_t(sizeof(scalar_t)), HW * int64_t(sizeof(scalar_t)));
  const bool direct = kDirect && !stream;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(direct ? 0 : HW);
    bool found_bad = false;
    for (int64_t t = begin; t < end; ++t) {
      acc_t* acc = direct ? reinterpret_cast<acc_t*>(gin + t * HW) : scratch.data();
      if (!direct) {
        std::fill(acc, acc + HW, acc_t(0));
      } else if ((t - begin) % group == 0) {
        std::fill(acc, acc + std::min(group, end - t) * HW, acc_t(0));
      }
      const stored_t* ip = idx + t * OHW;
      const scalar_t* gp = gout + t * OHW;
      // Outputs o .. o + n - 1 of one plane, their window origins `step` apart from `origin`.
      const auto add = [&](const stored_t* ip, const scalar_t* gp, int64_t n, int64_t origin, int64_t step) {
        for (int64_t o = 0; o < n; ++o) {
          const int64_t i = decode(ip[o], origin + o * step);
          const bool in = static_cast<uint64_t>(i) < static_cast<uint64_t>(HW);
          const acc_t v = static_cast<acc_t>(gp[o]);
          if (__builtin_expect(in, 1)) {
            acc[i] += v;
          } else {
            found_bad |= decode.bad(ip[o]);
          }
        }
      };
      if constexpr (ArgmaxDecoder<stored_t>::kTaps) {
        for (int64_t oh = 0; oh < g.OH; ++oh) add(ip + oh * g.OW, gp + oh * g.OW, g.OW, decode.origin(oh, 0), g.sw);
      } else {
        add(ip, gp, OHW, 0, 0);  // an index needs no origin: one flat loop over the plane
      }
      if (!direct) vec8::narrow_copy(acc, gin + t * HW, HW, stream);
    }
    if (stream) vec8::stream_fence();
    if (found_bad) bad.store(true, std::memory_order_relaxed);
  });
}

// NHWC: tasks own a batch element's block of channels (split only as far as
// needed to keep every thread busy) and scatter its outputs in row-major order.
template <typename scalar_t, typename stored_t>
void backward_nhwc(const scalar_t* gout, const stored_t* idx, scalar_t* gin, const Pool2dGeom& g,
                   std::atomic<bool>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<acc_t, scalar_t>;
  const int64_t HW = g.H * g.W;
  const int64_t OHW = g.OH * g.OW;
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = g.N >= threads ? 1 : std::min((2 * threads + g.N - 1) / g.N, (g.C + 7) / 8);
  const int64_t block = ((g.C + blocks - 1) / blocks + 7) / 8 * 8;
  const int64_t per_n = (g.C + block - 1) / block;
  const ArgmaxDecoder<stored_t> decode(g);
  at::parallel_for(0, g.N * per_n, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(kDirect ? 0 : HW * block);
    bool found_bad = false;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / per_n;
      const int64_t c0 = (t % per_n) * block;
      const int64_t cb = std::min(block, g.C - c0);
      scalar_t* out = gin + n * HW * g.C + c0;
      acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(out) : scratch.data();
      const int64_t ld = kDirect ? g.C : cb;  // distance between pixels in acc
      if (ld == cb) {
        std::fill(acc, acc + HW * cb, acc_t(0));
      } else {
        for (int64_t i = 0; i < HW; ++i) std::fill(acc + i * ld, acc + i * ld + cb, acc_t(0));
      }
      const stored_t* ip = idx + n * OHW * g.C + c0;
      const scalar_t* gp = gout + n * OHW * g.C + c0;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow, ip += g.C, gp += g.C) {
          const int64_t origin = decode.origin(oh, ow);
          for (int64_t c = 0; c < cb; ++c) {
            const int64_t i = decode(ip[c], origin);
            if (static_cast<uint64_t>(i) < static_cast<uint64_t>(HW)) {
              acc[i * ld + c] += static_cast<acc_t>(gp[c]);
            } else {
              found_bad |= decode.bad(ip[c]);
            }
          }
        }
      }
      if (!kDirect) {
        for (int64_t i = 0; i < HW; ++i) vec8::narrow_copy(acc + i * ld, out + i * g.C, cb);
      }
    }
    if (found_bad) bad.store(true, std::memory_order_relaxed);
  });
}

// Windows that tile the input (kernel == stride, no padding or dilation):
// each input element lies in at most one window.
inline bool windows_tile(const Pool2dGeom& g) {
  return g.kh == g.sh && g.kw == g.sw && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1;
}

// Flags `bad` when a tap is neither below kk nor kNoTap.
inline void check_taps(const uint8_t* taps, int64_t n, int64_t kk, std::atomic<bool>& bad) {
  using vec8::u8x32;
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    u8x32 top{};  // the largest taps other than kNoTap, lane by lane
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
      const u8x32 v = vec8::load_raw<u8x32>(taps + i);
      const u8x32 t = v == kNoTap ? u8x32{} : v;
      top = t > top ? t : top;
    }
    int64_t most = 0;
    for (int j = 0; j < 32; ++j) most = std::max<int64_t>(most, top[j]);
    for (; i < end; ++i) most = std::max<int64_t>(most, taps[i] == kNoTap ? 0 : taps[i]);
    if (most >= kk) bad.store(true, std::memory_order_relaxed);
  });
}

// bfloat16 backward from one-byte taps over tiling windows, as a gather on
// the bits, sixteen lanes at a time: an input element's gradient is 0 + its
// window's gradient (vec8::bf16_plus_zero) when the window's tap is the
// element's, else 0, which is what the scatter sums and rounds. Each element
// is written once, with no float scratch: 1.1-1.4x the scatter, and 2x
// nhwc_taps_backward's float lanes. (NCHW float is faster scattered into a
// zeroed, cache-resident plane: 0.75-0.8x gathered.)
// A tap neither below kh * kw nor kNoTap is reported through `bad`.
inline void tiled_taps_backward(const c10::BFloat16* gout, const uint8_t* taps, c10::BFloat16* gin,
                                const Pool2dGeom& g, bool channels_last, std::atomic<bool>& bad) {
  using vec8::u16x16;
  using bf16 = c10::BFloat16;
  const auto grad = [](uint8_t tap, int64_t expected, bf16 go) {
    return tap == expected ? static_cast<bf16>(0.0f + static_cast<float>(go)) : bf16(0);
  };
  check_taps(taps, g.N * g.C * g.OH * g.OW, g.kh * g.kw, bad);
  if (!channels_last) {
    const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
    const int64_t ow_in = std::min(g.OW, g.W / g.sw);  // windows wholly inside a row
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t h = 0; h < g.H; ++h) {
          bf16* row = gin + p * HW + h * g.W;
          const int64_t oh = h / g.sh;
          if (oh >= g.OH) {
            std::fill(row, row + g.W, bf16(0));
            continue;
          }
          const uint8_t* t = taps + p * OHW + oh * g.OW;
          const bf16* go = gout + p * OHW + oh * g.OW;
          const int64_t e = (h - oh * g.sh) * g.kw;
          int64_t ow = 0;
          if (g.sw == 2 && ow_in >= 8) {  // sixteen inputs (eight windows) at a time, the last eight overlapping
            const u16x16 expected = static_cast<uint16_t>(e) + u16x16{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
            for (; ow < ow_in; ow += 8) {
              const int64_t o = std::min(ow, ow_in - 8);
              const u16x16 v = vec8::bf16_plus_zero(vec8::load16_pairs(go + o));
              const u16x16 out = vec8::widen16_pairs(t + o) == expected ? v : u16x16{};
              std::memcpy(row + 2 * o, &out, sizeof(out));
            }
            ow = ow_in;
          }
          int64_t w = ow * g.sw;
          for (; ow < g.OW && w < g.W; ++ow) {
            for (int64_t tw = 0; tw < g.sw && w < g.W; ++tw, ++w) row[w] = grad(t[ow], e + tw, go[ow]);
          }
          std::fill(row + w, row + g.W, bf16(0));
        }
      }
    });
    return;
  }
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.H, h = r % g.H, oh = h / g.sh;
      bf16* row = gin + r * g.W * g.C;
      if (oh >= g.OH) {
        std::fill(row, row + g.W * g.C, bf16(0));
        continue;
      }
      const uint8_t* trow = taps + (n * g.OH + oh) * g.OW * g.C;
      const bf16* grow = gout + (n * g.OH + oh) * g.OW * g.C;
      for (int64_t w = 0; w < g.W; ++w) {
        bf16* px = row + w * g.C;
        const int64_t ow = w / g.sw;
        if (ow >= g.OW) {
          std::fill(px, px + g.C, bf16(0));
          continue;
        }
        const int64_t e = (h - oh * g.sh) * g.kw + (w - ow * g.sw);
        const uint8_t* t = trow + ow * g.C;
        const bf16* go = grow + ow * g.C;
        int64_t c = 0;
        for (; c + 16 <= g.C; c += 16) {
          const u16x16 v = vec8::bf16_plus_zero(vec8::load_raw<u16x16>(go + c));
          const u16x16 out = vec8::widen16(t + c) == static_cast<uint16_t>(e) ? v : u16x16{};
          std::memcpy(px + c, &out, sizeof(out));
        }
        for (; c < g.C; ++c) px[c] = grad(t[c], e, go[c]);
      }
    }
  });
}

// Along one dim, for every input position, the (output, tap) pairs of the
// windows that hold it as a tap, outputs ascending (a dilated window may span
// a position without a tap on it).
class TapsCovering {
 public:
  TapsCovering(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d) : start_(in + 1, 0) {
    for (int64_t i = 0; i < in; ++i) {
      const Range cover = max_pool_covering(i, out, k, s, p, d);
      for (int64_t o = cover.begin; o < cover.end; ++o) {
        const int64_t off = i - (o * s - p);
        if (off % d == 0) pairs_.push_back({o, off / d});
      }
      start_[i + 1] = static_cast<int64_t>(pairs_.size());
    }
  }
  struct Pair {
    int64_t out, tap;
  };
  const Pair* begin(int64_t i) const { return pairs_.data() + start_[i]; }
  const Pair* end(int64_t i) const { return pairs_.data() + start_[i + 1]; }

 private:
  std::vector<int64_t> start_;
  std::vector<Pair> pairs_;
};

// NHWC backward from one-byte taps as a gather, eight channels a lane: every
// input pixel adds, over the outputs whose window holds it in row-major
// order, the gradient where the output's tap is the pixel's and +0 elsewhere.
// Adding +0 changes no sum (the sum starts at +0, so is never -0): the
// result is the scatter's, bit for bit, and each input is written once,
// without zeroing grad_input first or decoding taps one by one.
template <typename scalar_t>
void nhwc_taps_backward(const scalar_t* gout, const uint8_t* taps, scalar_t* gin, const Pool2dGeom& g,
                        std::atomic<bool>& bad) {
  using vec8::f32x8;
  check_taps(taps, g.N * g.OH * g.OW * g.C, g.kh * g.kw, bad);
  const TapsCovering rows(g.H, g.OH, g.kh, g.sh, g.ph, g.dh), cols(g.W, g.OW, g.kw, g.sw, g.pw, g.dw);
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    const int64_t C = g.C;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.H, h = r % g.H;
      for (int64_t w = 0; w < g.W; ++w) {
        scalar_t* px = gin + (r * g.W + w) * C;
        // Channels c .. c + 8 * kRegs - 1, their sums held in registers across the spanning outputs.
        const auto lanes = [&](auto regs, int64_t c) {
          constexpr int kRegs = decltype(regs)::value;
          f32x8 acc[kRegs] = {};
          for (auto ro = rows.begin(h); ro != rows.end(h); ++ro) {
            for (auto co = cols.begin(w); co != cols.end(w); ++co) {
              const int32_t e = static_cast<int32_t>(ro->tap * g.kw + co->tap);
              const int64_t o = ((n * g.OH + ro->out) * g.OW + co->out) * C + c;
              for (int k = 0; k < kRegs; ++k) {
                const f32x8 v = vec8::load<1>(gout + o + 8 * k, 1);
                acc[k] += vec8::widen8(taps + o + 8 * k) == e ? v : f32x8{};
              }
            }
          }
          for (int k = 0; k < kRegs; ++k) vec8::store(px + c + 8 * k, acc[k]);
        };
        int64_t c = 0;
        for (; c + 32 <= C; c += 32) lanes(std::integral_constant<int, 4>{}, c);
        for (; c + 8 <= C; c += 8) lanes(std::integral_constant<int, 1>{}, c);
        for (; c < C; ++c) {
          float acc = 0.0f;
          for (auto ro = rows.begin(h); ro != rows.end(h); ++ro) {
            for (auto co = cols.begin(w); co != cols.end(w); ++co) {
              const int64_t o = ((n * g.OH + ro->out) * g.OW + co->out) * C + c;
              acc += taps[o] == ro->tap * g.kw + co->tap ? static_cast<float>(gout[o]) : 0.0f;
            }
          }
          px[c] = static_cast<scalar_t>(acc);
        }
      }
    }
  });
}

// The backward of every argmax pool (max, adaptive max). An index outside
// the plane other than -1 is never written and fails the call with the op's
// name (and, where taps are allowed, the tap rule).
template <typename scalar_t, typename stored_t>
void argmax_backward(const scalar_t* gout, const stored_t* idx, scalar_t* gin, const Pool2dGeom& g,
                     bool channels_last, const char* op, bool taps_allowed = false) {
  std::atomic<bool> bad{false};
  bool done = false;
  if constexpr (std::is_same_v<stored_t, uint8_t> && std::is_same_v<scalar_t, c10::BFloat16>) {
    if (windows_tile(g)) {
      tiled_taps_backward(gout, idx, gin, g, channels_last, bad);
      done = true;
    }
  }
  if constexpr (std::is_same_v<stored_t, uint8_t> && vec8::kSupported<scalar_t>) {
    // A gather reads every output spanning an input: at most 9 (3x3 windows at stride 1, where it
    // measured 0.7x the scatter's time); beyond that the scatter is kept. (Taps imply a max pool's
    // geometry: adaptive pools, with no kernel or stride, store int64 indices.)
    const bool few_spanning = ((g.kh + g.sh - 1) / g.sh) * ((g.kw + g.sw - 1) / g.sw) <= 9;
    if (!done && channels_last && few_spanning) {
      nhwc_taps_backward(gout, idx, gin, g, bad);
      done = true;
    }
  }
  if (!done) channels_last ? backward_nhwc(gout, idx, gin, g, bad) : backward_nchw(gout, idx, gin, g, bad);
  TORCH_CHECK(!bad.load(), op, ": found an invalid max index (outside the ", g.H, "x", g.W,
              " input plane and not -1)", taps_allowed ? " or tap (not below " : "",
              taps_allowed ? std::to_string(g.kh * g.kw) + " and not 255)" : std::string());
}

#if defined(__x86_64__)
// The max and argmax of kB channels of one NHWC image over a non-empty window
// (taps dh and dw apart) in sixteen-float registers (AVX-512F, chosen at run
// time): max_pool_takes lane by lane in row-major tap order, the first tap
// starting the scan, so the same result as the scalar scan. id(h, w, th, tw)
// (th, tw: the tap's rank in the window's in-range rows and columns) is what
// idx stores for the tap; without kIdx only the maxima are stored.
template <int kB, bool kIdx, typename T, typename out_t, typename Id>
__attribute__((target("avx512f"))) void nhwc_window_max16(const T* xn, int64_t W, int64_t C, Range rh, Range rw,
                                                          int64_t dh, int64_t dw, T* y, out_t* idx, const Id& id,
                                                          int64_t ahead) {
  constexpr int kV = kB / 16;
  const T* x0 = xn + (rh.begin * W + rw.begin) * C;
  __m512 best[kV];
  __m512i arg[kV];
  prefetch_block<kB * sizeof(T)>(x0 + ahead);
  {
    // One vmaxps a tap (ties keep the first), the tap taken where it compares
    // greater, and the sum of the taps beside them. A NaN sum (a NaN, or
    // infinities of both signs) has the window scanned again below, where the
    // last NaN wins.
    __m512 sum[kV];
    for (int v = 0; v < kV; ++v) {
      best[v] = sum[v] = vec16::load(x0 + 16 * v);
      if (kIdx) arg[v] = _mm512_set1_epi32(id(rh.begin, rw.begin, 0, 0));
    }
    for (int64_t h = rh.begin, th = 0; h < rh.end; h += dh, ++th) {
      for (int64_t w = rw.begin, tw = 0; w < rw.end; w += dw, ++tw) {
        if (th == 0 && tw == 0) continue;
        const T* src = xn + (h * W + w) * C;
        prefetch_block<kB * sizeof(T)>(src + ahead);
        const __m512i pos = _mm512_set1_epi32(kIdx ? id(h, w, th, tw) : 0);
        for (int v = 0; v < kV; ++v) {
          const __m512 x = vec16::load(src + 16 * v);
          if (kIdx) arg[v] = _mm512_mask_mov_epi32(arg[v], _mm512_cmp_ps_mask(x, best[v], _CMP_GT_OQ), pos);
          best[v] = vec16::max_over(x, best[v]);
          sum[v] = _mm512_add_ps(sum[v], x);
        }
      }
    }
    __mmask16 nan = 0;
    for (int v = 0; v < kV; ++v) nan |= _mm512_cmp_ps_mask(sum[v], sum[v], _CMP_UNORD_Q);
    if (nan == 0) {
      for (int v = 0; v < kV; ++v) {
        vec16::store_exact(y + 16 * v, best[v]);
        if (kIdx) vec16::store_index(idx + 16 * v, arg[v]);
      }
      return;
    }
  }
  for (int v = 0; v < kV; ++v) {
    best[v] = vec16::load(x0 + 16 * v);
    arg[v] = _mm512_set1_epi32(id(rh.begin, rw.begin, 0, 0));
  }
  for (int64_t h = rh.begin, th = 0; h < rh.end; h += dh, ++th) {
    for (int64_t w = rw.begin, tw = 0; w < rw.end; w += dw, ++tw) {
      if (th == 0 && tw == 0) continue;
      const T* src = xn + (h * W + w) * C;
      prefetch_block<kB * sizeof(T)>(src + ahead);
      const __m512i pos = _mm512_set1_epi32(kIdx ? id(h, w, th, tw) : 0);
      for (int v = 0; v < kV; ++v) {
        const __m512 x = vec16::load(src + 16 * v);
        const __mmask16 take = _mm512_cmp_ps_mask(x, best[v], _CMP_GT_OQ) | _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        best[v] = _mm512_mask_mov_ps(best[v], take, x);
        if (kIdx) arg[v] = _mm512_mask_mov_epi32(arg[v], take, pos);
      }
    }
  }
  for (int v = 0; v < kV; ++v) {
    vec16::store(y + 16 * v, best[v]);
    if (kIdx) vec16::store_index(idx + 16 * v, arg[v]);
  }
}
#endif

// nhwc_window_max16 in eight-float registers, for CPUs without AVX-512: kB
// channels, 32 at a time (with kIdx, twelve of the sixteen AVX2 registers).
// The compiler's own loop widened bfloat16 lane by lane (the stem's NHWC
// bfloat16 forward ran at half the copy bandwidth).
template <int kB, bool kIdx, typename T, typename out_t, typename Id>
inline void nhwc_window_max8(const T* xn, int64_t W, int64_t C, Range rh, Range rw, int64_t dh, int64_t dw, T* y,
                             out_t* idx, const Id& id, int64_t ahead) {
  using namespace vec8;
  constexpr int kV = std::min(kB, 32) / 8;
  static_assert(kB % (8 * kV) == 0);
  const int32_t first = id(rh.begin, rw.begin, 0, 0);
  for (int64_t c = 0; c < kB; c += 8 * kV) {
    const T* x0 = xn + (rh.begin * W + rw.begin) * C + c;
    f32x8 best[kV], sum[kV];
    i32x8 arg[kV];
    const auto scan = [&](const auto& take) {
      for (int v = 0; v < kV; ++v) {
        best[v] = sum[v] = load<1>(x0 + 8 * v, 1);
        arg[v] = broadcast(first);
      }
      for (int64_t h = rh.begin, th = 0; h < rh.end; h += dh, ++th) {
        for (int64_t w = rw.begin, tw = 0; w < rw.end; w += dw, ++tw) {
          if (th == 0 && tw == 0) continue;
          const T* src = xn + (h * W + w) * C + c;
          if (c == 0) prefetch_block<kB * sizeof(T)>(src + ahead);
          const i32x8 pos = broadcast(kIdx ? id(h, w, th, tw) : 0);
          for (int v = 0; v < kV; ++v) take(v, load<1>(src + 8 * v, 1), pos);
        }
      }
    };
    if (c == 0) prefetch_block<kB * sizeof(T)>(x0 + ahead);
    // As nhwc_window_max16: one vmaxps a tap and a sum beside it; a NaN sum has
    // the window scanned again, the last NaN winning.
    scan([&](int v, f32x8 x, i32x8 pos) {
      if (kIdx) arg[v] = x > best[v] ? pos : arg[v];
      best[v] = x > best[v] ? x : best[v];
      sum[v] += x;
    });
    f32x8 all = sum[0];
    for (int v = 1; v < kV; ++v) all += sum[v];
    if (any_nan(all)) {
      scan([&](int v, f32x8 x, i32x8 pos) {
        const i32x8 take = takes(x, best[v]);
        best[v] = take ? x : best[v];
        if (kIdx) arg[v] = take ? pos : arg[v];
      });
    }
    for (int v = 0; v < kV; ++v) {
      store(y + c + 8 * v, best[v]);
      if (kIdx) store_index(idx + c + 8 * v, arg[v]);
    }
  }
}

// Max over the window rh x rw of one NHWC image for m channels, each scanned in
// row-major tap order. kB > 0 fixes m = kB so the running maxima stay in vector
// registers across the taps (each tap prefetching its block `ahead` elements
// on); kB == 0 takes any m <= kLanes through L1.
template <int kB, typename scalar_t, typename index_t>
inline void nhwc_window_max_block(const scalar_t* xn, int64_t W, int64_t C, Range rh, Range rw, int64_t m,
                                  scalar_t* y, int64_t* idx, int64_t ahead) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kCap = kB > 0 ? kB : kLanes;
  if (kB > 0) m = kB;
  const index_t first = static_cast<index_t>(rh.begin * W + rw.begin);
  if constexpr (kB > 0 && vec8::kSupported<scalar_t> && sizeof(index_t) == 4) {
    const auto id = [W](int64_t h, int64_t w, int64_t, int64_t) { return int32_t(h * W + w); };
#if defined(__x86_64__)
    if (avx512_enabled()) return nhwc_window_max16<kB, true>(xn, W, C, rh, rw, 1, 1, y, idx, id, ahead);
#endif
    return nhwc_window_max8<kB, true>(xn, W, C, rh, rw, 1, 1, y, idx, id, ahead);
  }
  acc_t best[kCap];
  index_t arg[kCap];
  for (int64_t j = 0; j < m; ++j) {
    best[j] = lowest_value<acc_t>();
    arg[j] = first;
  }
  for (int64_t h = rh.begin; h < rh.end; ++h) {
    for (int64_t w = rw.begin; w < rw.end; ++w) {
      const index_t pos = static_cast<index_t>(h * W + w);
      const scalar_t* src = xn + (h * W + w) * C;
      if (kB > 0) prefetch_block<kB * sizeof(scalar_t)>(src + ahead);
      for (int64_t j = 0; j < m; ++j) {
        const acc_t v = static_cast<acc_t>(src[j]);
        const bool take = max_pool_takes(v, best[j]);
        best[j] = take ? v : best[j];
        arg[j] = take ? pos : arg[j];
      }
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    y[j] = static_cast<scalar_t>(best[j]);
    idx[j] = arg[j];
  }
}

// The first `channels` channels of one NHWC output pixel: max and argmax over
// a non-empty window, prefetching `ahead` elements on.
template <typename scalar_t, typename index_t>
void nhwc_window_max(const scalar_t* xn, int64_t W, int64_t C, int64_t channels, Range rh, Range rw, scalar_t* y,
                     int64_t* idx, int64_t ahead) {
  constexpr int kB = (sizeof(scalar_t) < 4 ? 256 : 128) / sizeof(at::opmath_type<scalar_t>);
  int64_t c0 = 0;
  for (; c0 + kB <= channels; c0 += kB) {
    nhwc_window_max_block<kB, scalar_t, index_t>(xn + c0, W, C, rh, rw, kB, y + c0, idx + c0, ahead);
  }
  for (; c0 < channels; c0 += kLanes) {
    nhwc_window_max_block<0, scalar_t, index_t>(xn + c0, W, C, rh, rw, std::min(kLanes, channels - c0), y + c0,
                                                idx + c0, ahead);
  }
}

#if defined(__x86_64__)
// nhwc_window_sum_block for kB half or bfloat16 channels in sixteen-float
// registers (AVX-512F, chosen at run time; in eight-float registers their
// widening and rounding made these sums slower than float's): the same lane
// arithmetic, and finish applied to each eight-float half, so the same bits.
template <int kB, typename T, typename Finish>
__attribute__((target("avx512f"))) void nhwc_window_sum16(const T* xn, int64_t W, int64_t C, Range rh, Range rw, T* y,
                                                          const Finish& finish, int64_t dh, int64_t dw, int64_t ahead,
                                                          bool stream) {
  constexpr int kV = kB / 16;
  const T* first = xn + (rh.begin * W + rw.begin) * C;
  __m512 acc[kV];
  prefetch_block<kB * sizeof(T)>(first + ahead);
  for (int v = 0; v < kV; ++v) acc[v] = _mm512_add_ps(_mm512_setzero_ps(), vec16::load(first + 16 * v));
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = h == rh.begin ? rw.begin + dw : rw.begin; w < rw.end; w += dw) {
      const T* src = xn + (h * W + w) * C;
      prefetch_block<kB * sizeof(T)>(src + ahead);
      for (int v = 0; v < kV; ++v) acc[v] = _mm512_add_ps(acc[v], vec16::load(src + 16 * v));
    }
  }
  for (int v = 0; v < kV; ++v) vec16::store(y + 16 * v, vec16::each_half(acc[v], finish), stream);
}
#endif

// Window sum of m channels of one NHWC image over a non-empty window in
// row-major tap order (taps dh and dw apart), then finish(sum) stored; kB as
// in nhwc_window_max_block.
template <int kB, typename scalar_t, typename Finish>
inline void nhwc_window_sum_block(const scalar_t* xn, int64_t W, int64_t C, Range rh, Range rw, int64_t m,
                                  scalar_t* y, const Finish& finish, int64_t dh, int64_t dw, int64_t ahead,
                                  bool stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kCap = kB > 0 ? kB : kLanes;
  if (kB > 0) m = kB;
  const scalar_t* first = xn + (rh.begin * W + rw.begin) * C;
#if defined(__x86_64__)
  if constexpr (kB > 0 && vec8::kSupported<scalar_t> && sizeof(scalar_t) == 2) {
    if (avx512_enabled()) return nhwc_window_sum16<kB>(xn, W, C, rh, rw, y, finish, dh, dw, ahead, stream);
  }
#endif
  if constexpr (kB > 0 && std::is_same_v<scalar_t, c10::BFloat16>) {
    // bfloat16 as even and odd channels (one shift or mask per eight; load()
    // widens in two, and the rounding back needs no shuffle). On an AVX2-only
    // Zen 3: avgpool 3/2/1 1.6-1.7 -> 1.2-1.4 ms, adaptive avg 7 0.46 -> 0.28.
    constexpr int kG = kB / 16;
    vec8::f32x8 even[kG], odd[kG];
    prefetch_block<kB * sizeof(scalar_t)>(first + ahead);
    for (int v = 0; v < kG; ++v) {
      vec8::load2_pair(first + 16 * v, even[v], odd[v]);
      even[v] = vec8::f32x8{} + even[v];
      odd[v] = vec8::f32x8{} + odd[v];
    }
    for (int64_t h = rh.begin; h < rh.end; h += dh) {
      for (int64_t w = h == rh.begin ? rw.begin + dw : rw.begin; w < rw.end; w += dw) {
        const scalar_t* src = xn + (h * W + w) * C;
        prefetch_block<kB * sizeof(scalar_t)>(src + ahead);
        for (int v = 0; v < kG; ++v) {
          vec8::f32x8 e, o;
          vec8::load2_pair(src + 16 * v, e, o);
          even[v] += e;
          odd[v] += o;
        }
      }
    }
    for (int v = 0; v < kG; ++v) vec8::store_pair(y + 16 * v, finish(even[v]), finish(odd[v]), stream);
    return;
  }
  if constexpr (kB > 0 && vec8::kSupported<scalar_t>) {
    // The same sums in eight-float registers (the compiler's own widening of
    // half and bfloat16 took six instructions per register; its rounding was scalar).
    constexpr int kV = kB / 8;
    vec8::f32x8 acc[kV];
    prefetch_block<kB * sizeof(scalar_t)>(first + ahead);
    for (int v = 0; v < kV; ++v) acc[v] = vec8::f32x8{} + vec8::load<1>(first + 8 * v, 1);
    for (int64_t h = rh.begin; h < rh.end; h += dh) {
      for (int64_t w = h == rh.begin ? rw.begin + dw : rw.begin; w < rw.end; w += dw) {
        const scalar_t* src = xn + (h * W + w) * C;
        prefetch_block<kB * sizeof(scalar_t)>(src + ahead);
        for (int v = 0; v < kV; ++v) acc[v] += vec8::load<1>(src + 8 * v, 1);
      }
    }
    for (int v = 0; v < kV; ++v) {
      stream ? vec8::store_stream(y + 8 * v, finish(acc[v])) : vec8::store(y + 8 * v, finish(acc[v]));
    }
    return;
  }
  // The sums start at 0 + the first tap (not a separate zero fill, which the
  // compiler turns into a slow memset of the register block).
  acc_t acc[kCap];
  if (kB > 0) prefetch_block<kB * sizeof(scalar_t)>(first + ahead);
  for (int64_t j = 0; j < m; ++j) acc[j] = acc_t(0) + static_cast<acc_t>(first[j]);
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = h == rh.begin ? rw.begin + dw : rw.begin; w < rw.end; w += dw) {
      const scalar_t* src = xn + (h * W + w) * C;
      if (kB > 0) prefetch_block<kB * sizeof(scalar_t)>(src + ahead);
      for (int64_t j = 0; j < m; ++j) acc[j] += static_cast<acc_t>(src[j]);
    }
  }
  for (int64_t j = 0; j < m; ++j) y[j] = static_cast<scalar_t>(finish(acc[j]));
}

// Channels of one pixel that nhwc_window_sum_wide sums at most.
constexpr int64_t kWideChannels = 1024;

// The first `channels` (a multiple of 8, at most kWideChannels) float
// channels of nhwc_window_sum_block's sums, gathered in an L1 array one tap
// at a time, so that each tap's channels are read as one run, without
// software prefetch (the register blocks read 64 channels of every tap in
// turn). The additions are made in the same order: the same bits.
template <typename Finish>
void nhwc_window_sum_wide(const float* xn, int64_t W, int64_t C, int64_t channels, Range rh, Range rw, float* y,
                          const Finish& finish, int64_t dh, int64_t dw, bool stream) {
  vec8::f32x8 acc[kWideChannels / 8];
  const float* first = xn + (rh.begin * W + rw.begin) * C;
  for (int64_t c = 0; c < channels; c += 8) acc[c / 8] = vec8::f32x8{} + vec8::load<1>(first + c, 1);
  for (int64_t h = rh.begin; h < rh.end; h += dh) {
    for (int64_t w = h == rh.begin ? rw.begin + dw : rw.begin; w < rw.end; w += dw) {
      const float* src = xn + (h * W + w) * C;
      for (int64_t c = 0; c < channels; c += 8) acc[c / 8] += vec8::load<1>(src + c, 1);
    }
  }
  for (int64_t c = 0; c < channels; c += 8) {
    stream ? vec8::store_stream(y + c, finish(acc[c / 8])) : vec8::store(y + c, finish(acc[c / 8]));
  }
}

// `stream` (see stream_output) writes the full channel blocks with
// non-temporal stores; the task then ends with vec8::stream_fence().
template <typename scalar_t, typename Finish>
void nhwc_window_sum(const scalar_t* xn, int64_t W, int64_t C, int64_t channels, Range rh, Range rw, scalar_t* y,
                     const Finish& finish, int64_t ahead, int64_t dh = 1, int64_t dw = 1, bool stream = false) {
  constexpr int kB = 256 / sizeof(at::opmath_type<scalar_t>);
  int64_t c0 = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // Streamed outputs (inputs read from memory) wider than a register block, where the CPU has no AVX-512 (the
    // blocks' prefetch was tuned on a Zen 5): on an AVX2-only Zen 3, DenseNet's 2/2 average pool ran at
    // 0.88-1.04x torch's speed in register blocks, 1.05-1.18x in these sums.
    if (stream && channels > kB && channels <= kWideChannels && !avx512_enabled()) {
      c0 = channels / 8 * 8;
      nhwc_window_sum_wide(xn, W, C, c0, rh, rw, y, finish, dh, dw, stream);
    }
  }
  for (; c0 + kB <= channels; c0 += kB) {
    nhwc_window_sum_block<kB>(xn + c0, W, C, rh, rw, kB, y + c0, finish, dh, dw, ahead, stream);
  }
  for (; c0 < channels; c0 += kLanes) {
    nhwc_window_sum_block<0>(xn + c0, W, C, rh, rw, std::min(kLanes, channels - c0), y + c0, finish, dh, dw, ahead,
                             false);
  }
}

}  // namespace poolops
