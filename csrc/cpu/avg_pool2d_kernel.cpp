// avg_pool2d on CPU: forward and the scatter backward, NCHW and NHWC.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../pool_args.h"
#include "cpu_loops.h"
#include "vec16.h"
#include "vec8.h"

namespace poolops {
namespace {

// The windows of every output row and column and the divisor of every output.
template <typename acc_t>
struct AvgTables {
  std::vector<Range> rows, cols;
  std::vector<ExactDiv<acc_t>> divisors;  // (OH, OW)
  AvgTables(const Pool2dGeom& g, const AvgPoolOpts& opt) : rows(g.OH), cols(g.OW), divisors(g.OH * g.OW) {
    std::vector<AvgWindow> wh(g.OH), ww(g.OW);
    for (int64_t oh = 0; oh < g.OH; ++oh) rows[oh] = (wh[oh] = avg_row_window(oh, g, opt)).taps;
    for (int64_t ow = 0; ow < g.OW; ++ow) cols[ow] = (ww[ow] = avg_col_window(ow, g, opt)).taps;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        divisors[oh * g.OW + ow] = ExactDiv<acc_t>(static_cast<acc_t>(avg_pool_divisor(wh[oh], ww[ow], opt)));
      }
    }
  }
};

// AvgTables' divisors as separate arrays (eight at a time load into a
// register); `by_mul` marks the output rows whose inner outputs may all
// multiply by the inverse (ExactDiv).
template <typename acc_t>
struct DivisorPlane {
  std::vector<acc_t> d, inv;
  std::vector<char> by_mul;
  DivisorPlane(const AvgTables<acc_t>& tab, const Pool2dGeom& g, Range inner)
      : d(g.OH * g.OW), inv(g.OH * g.OW), by_mul(g.OH, 1) {
    for (int64_t i = 0; i < g.OH * g.OW; ++i) {
      d[i] = tab.divisors[i].d;
      inv[i] = tab.divisors[i].inv;
      const int64_t ow = i % g.OW;
      if (ow >= inner.begin && ow < inner.end) by_mul[i / g.OW] &= tab.divisors[i].by_mul;
    }
  }
};

// Window sums of kV consecutive outputs of one NCHW row, every tap added in
// row-major order (at, step and kStep as in row_blocks), each then divided by
// its divisor d (or multiplied by inv, the same quotient, when by_mul). The
// eight-float version keeps its lanes in one AVX2 register.
template <int kV, int kStep, typename acc_t, typename At, typename scalar_t>
inline void sum_row_block(const At& at, int64_t step, int64_t rows, int64_t kw, const acc_t* d, const acc_t* inv,
                          bool by_mul, scalar_t* y) {
  const int64_t st = kStep > 0 ? kStep : step;
  acc_t acc[kV] = {};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < kw; ++t) {
      const auto* src = at(r, t);
      for (int j = 0; j < kV; ++j) acc[j] += static_cast<acc_t>(src[j * st]);
    }
  }
  for (int j = 0; j < kV; ++j) y[j] = static_cast<scalar_t>(by_mul ? acc[j] * inv[j] : acc[j] / d[j]);
}

template <int kStep, typename At, typename scalar_t>
inline void sum_row_vec8(const At& at, int64_t step, bool pairs, int64_t rows, int64_t kw, const float* d,
                         const float* inv, bool by_mul, scalar_t* y) {
  vec8::f32x8 acc = vec8::broadcast(0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for_each_tap<kStep>(at, r, kw, step, pairs, [&](int64_t, vec8::f32x8 v) { acc += v; });
  }
  vec8::store(y, by_mul ? acc * vec8::load<1>(inv, 1) : acc / vec8::load<1>(d, 1));
}

// sum_row_vec8 for kB row blocks (RowBlock8, aux: the first output's offset
// in d and inv) at a time, for the instruction-level parallelism, window rows
// rs apart, taps dw (for_each_tap_blocks8). (A block at a time, the 3/2/1
// NCHW average pool took 1.5x as long on AVX2.)
template <int kB, int kStep, typename scalar_t>
__attribute__((always_inline)) inline void sum_blocks8(const RowBlock8<scalar_t>* blocks, int64_t rs, int64_t rows,
                                                      int64_t kw, int64_t dw, bool pairs, const float* d,
                                                      const float* inv, bool by_mul, scalar_t* y) {
  using namespace vec8;
  f32x8 acc[kB];
#pragma GCC unroll 4  // no rep stos (see max_blocks8)
  for (int b = 0; b < kB; ++b) acc[b] = broadcast(0.0f);
  for_each_tap_blocks8<kB, kStep>(blocks, rs, rows, kw, dw, pairs,
                                  [&](int b, f32x8 v, int64_t, int64_t) { acc[b] += v; });
  for (int b = 0; b < kB; ++b) {
    const f32x8 sum = kStep == 2 && pairs ? from_pair_order<scalar_t>(acc[b]) : acc[b];
    const int64_t o = blocks[b].aux;
    store(y + blocks[b].out, by_mul ? sum * load<1>(inv + o, 1) : sum / load<1>(d + o, 1));
  }
}

#if defined(__x86_64__)
// sum_row_vec8 for sixteen outputs in one AVX-512 register (chosen at run
// time): the same additions lane by lane.
template <int kStep, typename At, typename scalar_t>
__attribute__((target("avx512f"))) void sum_row_vec16(const At& at, int64_t step, bool pairs, int64_t rows,
                                                      int64_t kw, const float* d, const float* inv, bool by_mul,
                                                      scalar_t* y) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    int64_t t = 0;
    if (kStep == 2 && pairs) {
      for (; t + 1 < kw; t += 2) {
        __m512 even, odd;
        vec16::load2_pair(at(r, t), even, odd);
        acc = _mm512_add_ps(_mm512_add_ps(acc, even), odd);
      }
      if (t < kw) acc = _mm512_add_ps(acc, vec16::load2_after(at(r, t++)));
    }
    for (; t < kw; ++t) acc = _mm512_add_ps(acc, vec16::load<kStep>(at(r, t), step));
  }
  vec16::store(y, by_mul ? _mm512_mul_ps(acc, _mm512_loadu_ps(inv)) : _mm512_div_ps(acc, _mm512_loadu_ps(d)));
}

// sum_row_vec16 at stride 2 with taps loaded in pairs (tap_pairs) for kB
// blocks of sixteen outputs from c0 on, all of one row: src points at tap 0 of
// window row 0 of output 0, window rows rs apart; d and inv are the row's.
template <int kB, typename scalar_t>
__attribute__((target("avx512f"))) void sum_blocks_pairs16(const scalar_t* src, int64_t rs, int64_t rows, int64_t kw,
                                                           int64_t c0, const float* d, const float* inv, bool by_mul,
                                                           scalar_t* y) {
  __m512 acc[kB];
  for (int b = 0; b < kB; ++b) acc[b] = _mm512_setzero_ps();
  for_each_pair_tap16<kB>(src + 2 * c0, rs, rows, kw, [&](int b, __m512 v, int64_t, int64_t) __attribute__((
                                                           target("avx512f"))) { acc[b] = _mm512_add_ps(acc[b], v); });
  for (int b = 0; b < kB; ++b) {
    const int64_t o = c0 + 16 * b;
    vec16::store(y + o, by_mul ? _mm512_mul_ps(acc[b], _mm512_loadu_ps(inv + o))
                               : _mm512_div_ps(acc[b], _mm512_loadu_ps(d + o)));
  }
}
#endif

// NCHW: one task per output row. Outputs whose window lies inside [0, W) are
// summed first, kV at a time (row_blocks), each in row-major tap order and
// then divided, as the shared scalar path then does for the border outputs
// and for rows with fewer than kV inner outputs. Float, half and bfloat16 take
// eight-float blocks (at stride 1 or 2 queued across rows, sum_blocks8; above
// 2 their rows are phased), sixteen with AVX-512, at stride 2 with taps in
// pairs two blocks at a time
// (sum_blocks_pairs16), and planes whose rows are too short for a block go
// eight planes at a time (plane_groups).
template <typename scalar_t>
void forward_nchw(const scalar_t* x, scalar_t* y, const Pool2dGeom& g, const AvgPoolOpts& opt) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kVec = vec8::kSupported<scalar_t>;
  constexpr int kV = kVec ? 8 : 128 / sizeof(acc_t);
  const bool phased = kVec && g.sw > 2;
  const bool pairs = tap_pairs(g);
  const Range inner = inner_columns(g);
  const bool wide = kVec && avx512_enabled() && inner.end - inner.begin >= 16;  // sixteen-float blocks
  const AvgTables<acc_t> tab(g, opt);
  if constexpr (kVec) {
    if (inner.end - inner.begin < kV && g.H * g.W <= kPlaneGroupMaxHW) {  // rows too short: a lane per plane
      const int64_t OHW = g.OH * g.OW;
      plane_groups(x, g.N * g.C, g.H * g.W, OHW, OHW * g.kh * g.kw, [&](const float* block, int64_t p0, int64_t lanes,
                                                                        vec8::f32x8* v, vec8::i32x8*) {
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const Range rh = tab.rows[oh], rw = tab.cols[ow];
            v[oh * g.OW + ow] = rh.empty() || rw.empty() ? vec8::broadcast(0.0f)
                                : vec8::divide(block_window_sum(block, g.W, rh, rw, g.dh, g.dw),
                                               tab.divisors[oh * g.OW + ow]);
          }
        }
        store_plane_group(v, OHW, lanes, y + p0 * OHW);
      });
      return;
    }
  }
  const DivisorPlane<acc_t> div(tab, g, inner);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.OW * g.kh * g.kw));
  // Stride 1 or 2 in eight-float registers, where AVX-512 takes none of the
  // rows: every row's inner outputs go to sum_blocks8 four blocks at a time,
  // keyed by their window rows and whether their divisors multiply, from a
  // plan made once for all planes (as max_pool2d's forward_nchw).
  const bool blocks8 = kVec && g.sw <= 2 && inner.end - inner.begin >= 8 && !wide;
  const std::vector<RowPlan> plan = blocks8 ? row_plans(g, tab.rows, inner) : std::vector<RowPlan>{};
  const auto border = [&](const scalar_t* plane, int64_t oh, int64_t r, bool sweep) {
    const Range rh = tab.rows[oh];
    scalar_t* yrow = y + r * g.OW;
    for (int64_t ow = 0; ow < g.OW; ++ow) {  // avg_pool_output from the tables
      if (sweep && ow == inner.begin) ow = inner.end;
      if (ow == g.OW) break;
      const Range rw = tab.cols[ow];
      yrow[ow] = rh.empty() || rw.empty() ? scalar_t(0)
                 : static_cast<scalar_t>(tab.divisors[oh * g.OW + ow](
                       window_sum<scalar_t, acc_t>(plane, g.W, 1, rh, rw, g.dh, g.dw)));
    }
  };
  at::parallel_for(0, g.N * g.C * g.OH, grain, [&](int64_t begin, int64_t end) {
    if constexpr (kVec) {
      if (blocks8) {
        const auto flush = [&]<int kB>(const RowBlock8<scalar_t>* blocks, int64_t key, Step<kB>) {
          const int64_t rows = key >> 1;
          const bool by_mul = key & 1;
          g.sw == 1 ? sum_blocks8<kB, 1>(blocks, g.dh * g.W, rows, g.kw, g.dw, pairs, div.d.data(), div.inv.data(),
                                         by_mul, y)
                    : sum_blocks8<kB, 2>(blocks, g.dh * g.W, rows, g.kw, g.dw, pairs, div.d.data(), div.inv.data(),
                                         by_mul, y);
        };
        const auto key = [&](int64_t oh, const RowPlan& p) { return p.nrows * 2 + div.by_mul[oh]; };
        const auto first = [&](int64_t oh, const RowPlan&) { return oh * g.OW + inner.begin; };
        return queued_rows8(x, begin, end, g, plan, inner, flush, key, first, 1, border);
      }
    }
    auto phase = phase_rows<acc_t>(g, phased);
    const int64_t ahead = rows_ahead(g, sizeof(scalar_t));
    nchw_output_rows(x, begin, end, g, [&](const scalar_t* plane, int64_t oh, int64_t r) {
      scalar_t* yrow = y + r * g.OW;
      const Range rh = tab.rows[oh];
      const bool sweep = !rh.empty() && inner.end - inner.begin >= kV;
      // The inner outputs first: the border outputs then read lines the sweep brought in (read first,
      // they had missed the cache in the float32 'same' pools, 1.5x slower).
      if (sweep) [&] {
        const int64_t rows = g.dh == 1 ? rh.end - rh.begin : (rh.end - rh.begin + g.dh - 1) / g.dh;
        const acc_t* d = div.d.data() + oh * g.OW;
        const acc_t* inv = div.inv.data() + oh * g.OW;
        const bool by_mul = div.by_mul[oh];
#if defined(__x86_64__)
        if constexpr (kVec) {
          if (wide && g.sw == 2 && pairs) {
            const scalar_t* src = plane + rh.begin * g.W;
            prefetch_rows_ahead(src, g, ahead);
            src += inner.begin * 2 - g.pw;
            const int64_t o = inner.begin;
            blocks_by<16, 2>(inner.end - inner.begin, [&]<int kB>(int64_t c0, Step<kB>) {
              sum_blocks_pairs16<kB>(src, g.dh * g.W, rows, g.kw, c0, d + o, inv + o, by_mul, yrow + o);
            });
            return;
          }
          if (wide) {
            row_blocks<16>(plane + rh.begin * g.W, rows, g, inner, phased, phase, ahead,
                           [&]<int kStep>(int64_t c0, const auto& at, Step<kStep>, int64_t step) {
              sum_row_vec16<kStep>(at, step, pairs, rows, g.kw, d + c0, inv + c0, by_mul, yrow + c0);
            });
            return;
          }
        }
#endif
        row_blocks<kV>(plane + rh.begin * g.W, rows, g, inner, phased, phase, ahead,
                       [&]<int kStep>(int64_t c0, const auto& at, Step<kStep>, int64_t step) {
          if constexpr (kVec) {
            sum_row_vec8<kStep>(at, step, pairs, rows, g.kw, d + c0, inv + c0, by_mul, yrow + c0);
          } else {
            sum_row_block<kV, kStep>(at, step, rows, g.kw, d + c0, inv + c0, by_mul, yrow + c0);
          }
        });
      }();
      border(plane, oh, r, sweep);
    });
  });
}

// NHWC: all channels of an output pixel summed together, each in the same
// row-major tap order as the scalar path, so both layouts agree bit for bit.
template <typename scalar_t>
void forward_nhwc(const scalar_t* x, scalar_t* y, const Pool2dGeom& g, const AvgPoolOpts& opt) {
  using acc_t = at::opmath_type<scalar_t>;
  const AvgTables<acc_t> tab(g, opt);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.C * g.kh * g.kw));
  const bool next_rows = prefetch_below(g, sizeof(scalar_t));
  const int64_t ahead = next_rows ? 0 : prefetch_ahead(g.sw * g.C, sizeof(scalar_t));
  const int64_t pixel_bytes = g.C * int64_t(sizeof(scalar_t));
  const bool stream = stream_output(y, g.N * g.OH * g.OW * pixel_bytes, pixel_bytes);
  at::parallel_for(0, g.N * g.OH * g.OW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ow = p % g.OW;
      const int64_t oh = (p / g.OW) % g.OH;
      const scalar_t* xn = x + (p / (g.OW * g.OH)) * g.H * g.W * g.C;
      const Range rh = tab.rows[oh], rw = tab.cols[ow];
      if (rh.empty() || rw.empty()) {
        std::fill(y + p * g.C, y + (p + 1) * g.C, scalar_t(0));
        continue;
      }
      if (next_rows) prefetch_rows_below(xn, g, rh, rw);
      const ExactDiv<acc_t>& div = tab.divisors[oh * g.OW + ow];
      nhwc_window_sum(xn, g.W, g.C, g.C, rh, rw, y + p * g.C, [&](auto sum) { return div(sum); }, ahead, g.dh,
                      g.dw, stream);
    }
    if (stream) vec8::stream_fence();
  });
}

// Every input element sums grad / divisor of the windows holding it, the
// quotient taken once per output as ATen's CPU scatter does.
template <typename scalar_t>
void backward(const scalar_t* gout, scalar_t* gin, const Pool2dGeom& g, const AvgPoolOpts& opt, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const AvgTables<acc_t> tab(g, opt);
  window_avg_backward(gout, gin, g, tab.rows, tab.cols, channels_last, [&](int64_t oh, int64_t ow) {
    return Divisor<acc_t, false>{tab.divisors[oh * g.OW + ow], {}};
  }, g.dh, g.dw);
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override, at::IntArrayRef dilation) {
  const Pool2dGeom geom = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override, dilation);
  const AvgPoolOpts opt = avg_pool_opts(padding, count_include_pad, divisor_override);
  return std::get<0>(run_pool2d(input, geom, false, [&](const at::Tensor& x, const at::Tensor& out, const at::Tensor&,
                                                        const Pool2dGeom& g, bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool2d", [&] {
      cl ? forward_nhwc(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, opt)
         : forward_nchw(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, opt);
    });
  }));
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
                                   at::IntArrayRef dilation) {
  const Pool2dGeom geom = check_avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                                                    divisor_override, dilation);
  const AvgPoolOpts opt = avg_pool_opts(padding, count_include_pad, divisor_override);
  return run_pool2d_backward(grad_output, at::Tensor(), input_size, geom,
                             [&](const at::Tensor& gout, const at::Tensor&, const at::Tensor& gin, const Pool2dGeom& g,
                                 bool cl) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "avg_pool2d_backward", [&] {
      backward(gout.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g, opt, cl);
    });
  });
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CPU, m) {
  m.impl("avg_pool2d", &poolops::avg_pool2d_cpu);
  m.impl("_avg_pool2d_backward", &poolops::avg_pool2d_backward_cpu);
}
