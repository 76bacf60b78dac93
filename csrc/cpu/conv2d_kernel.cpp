// conv2d on CPU. Dense convolutions run as im2col columns times the weight
// through a GEMM (conv_args.cpp, cpu/gemm.h); this file holds the column kernels and a
// direct depthwise kernel (NCHW and NHWC) with its two backward passes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "../conv_args.h"
#include "cpu_loops.h"
#include "conv2d_direct.h"
#include "gemm.h"
#include "vec16.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace poolops {
namespace {

constexpr int64_t kBlock = 16;   // NCHW outputs kept in registers across the taps

// a + w * x rounded once for floating types, written out so that every build
// (-O1 contracts nothing) sums the depthwise taps the same way in every layout.
template <typename acc_t>
inline acc_t mul_add(acc_t w, acc_t x, acc_t a) {
  if constexpr (std::is_floating_point_v<acc_t>) {
    return std::fma(w, x, a);
  } else {
    return a + w * x;
  }
}

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// conv_reader for every input row (column) and tap row (column), computed
// once per call rather than per pixel: -1 where the tap reads no output.
class ReaderTables {
 public:
  explicit ReaderTables(const Conv2dGeom& g) : kh_(g.kh), kw_(g.kw), rows_(g.H * g.kh), cols_(g.W * g.kw) {
    for (int64_t e = 0; e < g.H * g.kh; ++e) rows_[e] = conv_reader(e / g.kh, e % g.kh, g.OH, g.sh, g.ph, g.dh);
    for (int64_t e = 0; e < g.W * g.kw; ++e) cols_[e] = conv_reader(e / g.kw, e % g.kw, g.OW, g.sw, g.pw, g.dw);
  }
  // fn(i, j, oh, ow) for every tap (i, j) that reads input (h, w) into output (oh, ow), row-major.
  template <typename Fn>
  void each(int64_t h, int64_t w, const Fn& fn) const {
    for (int64_t i = 0; i < kh_; ++i) {
      const int64_t oh = rows_[h * kh_ + i];
      if (oh < 0) continue;
      for (int64_t j = 0; j < kw_; ++j) {
        const int64_t ow = cols_[w * kw_ + j];
        if (ow >= 0) fn(i, j, oh, ow);
      }
    }
  }

 private:
  int64_t kh_, kw_;
  std::vector<int64_t> rows_, cols_;
};

// dst[t] = src[2 * t]: 2- and 4-byte elements a register at a time (the
// compiler leaves this loop scalar), the last register reaching back over
// the one before; reads no element past src[2 * (n - 1)].
template <typename T>
inline void copy_even(const T* src, T* dst, int64_t n) {
  int64_t t = 0;
#if defined(__AVX2__)
  constexpr int64_t kV = sizeof(T) == 2 ? 16 : sizeof(T) == 4 ? 8 : 0;
  if constexpr (kV > 0) {
    const auto even = [&](int64_t at) {
      if constexpr (kV == 16) {
        const __m256i low = _mm256_set1_epi32(0xFFFF);
        const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * at)), low);
        const __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * at + 16)), low);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + at),
                            _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
      } else {
        const __m256 a = _mm256_loadu_ps(reinterpret_cast<const float*>(src + 2 * at));
        const __m256 b = _mm256_loadu_ps(reinterpret_cast<const float*>(src + 2 * at + 8));
        const __m256d e = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88));
        _mm256_storeu_ps(reinterpret_cast<float*>(dst + at), _mm256_castpd_ps(_mm256_permute4x64_pd(e, 0xD8)));
      }
    };
    // A register at `at` reads up to src[2 * at + 2 * kV - 1]: at most n - kV - 1.
    for (; t + kV + 1 <= n; t += kV) even(t);
    if (t > 0 && t < n - 1) {
      even(n - kV - 1);
      t = n - 1;
    }
  }
#endif
  for (; t < n; ++t) dst[t] = src[2 * t];
}

template <typename T>
inline void copy_any_step(const T* src, int64_t step, T* dst, int64_t n) {
  if (step == 1) {
    std::memcpy(dst, src, n * sizeof(T));
  } else if (step == 2) {
    copy_even(src, dst, n);
  } else {
    for (int64_t t = 0; t < n; ++t) dst[t] = src[t * step];
  }
}

// --- columns -----------------------------------------------------------------------------------

template <typename T>
void im2col_nchw(const T* x, T* cols, const Conv2dGeom& g) {
  const int64_t K = g.C * g.kh * g.kw;
  at::parallel_for(0, K, grain_for(g.ohw()), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t j = k % g.kw;
      const int64_t i = (k / g.kw) % g.kh;
      const T* plane = x + (k / (g.kh * g.kw)) * g.H * g.W;
      T* row = cols + k * g.ohw();
      const Range rh = conv_tap_outputs(i, g.H, g.OH, g.sh, g.ph, g.dh);
      const Range rw = conv_tap_outputs(j, g.W, g.OW, g.sw, g.pw, g.dw);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        T* out = row + oh * g.OW;
        if (oh < rh.begin || oh >= rh.end || rw.empty()) {
          std::fill(out, out + g.OW, T(0));
          continue;
        }
        std::fill(out, out + rw.begin, T(0));
        const T* src = plane + conv_source(oh, i, g.sh, g.ph, g.dh) * g.W + conv_source(rw.begin, j, g.sw, g.pw, g.dw);
        copy_any_step(src, g.sw, out + rw.begin, rw.end - rw.begin);
        std::fill(out + rw.end, out + g.OW, T(0));
      }
    }
  });
}

template <typename T>
void im2col_nhwc(const T* x, T* cols, const Conv2dGeom& g) {
  const int64_t K = g.C * g.kh * g.kw;
  const int64_t cg = g.cg();
  at::parallel_for(0, g.ohw(), grain_for(K), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t oh = p / g.OW, ow = p % g.OW;
      T* row = cols + p * K;
      if (g.groups == 1 && g.dw == 1) {  // a window row's in-range taps are one run of the input row
        const Range rw = max_pool_taps(ow, g.W, g.kw, g.sw, g.pw, 1);  // the in-range input columns
        const int64_t w0 = conv_source(ow, 0, g.sw, g.pw, 1);
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t h = conv_source(oh, i, g.sh, g.ph, g.dh);
          T* dst = row + i * g.kw * g.C;
          if (h < 0 || h >= g.H || rw.empty()) {
            std::fill(dst, dst + g.kw * g.C, T(0));
            continue;
          }
          std::fill(dst, dst + (rw.begin - w0) * g.C, T(0));
          std::memcpy(dst + (rw.begin - w0) * g.C, x + (h * g.W + rw.begin) * g.C, (rw.end - rw.begin) * g.C * sizeof(T));
          std::fill(dst + (rw.end - w0) * g.C, dst + g.kw * g.C, T(0));
        }
        continue;
      }
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t h = conv_source(oh, i, g.sh, g.ph, g.dh);
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t w = conv_source(ow, j, g.sw, g.pw, g.dw);
            T* dst = row + ((grp * g.kh + i) * g.kw + j) * cg;
            if (h < 0 || h >= g.H || w < 0 || w >= g.W) {
              std::fill(dst, dst + cg, T(0));
            } else {
              std::memcpy(dst, x + (h * g.W + w) * g.C + grp * cg, cg * sizeof(T));
            }
          }
        }
      }
    }
  });
}

void im2col(const at::Tensor& x, const at::Tensor& cols, int64_t n, const Conv2dGeom& g, bool channels_last) {
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_im2col", [&] {
    const scalar_t* xn = x.const_data_ptr<scalar_t>() + n * g.C * g.H * g.W;
    scalar_t* cp = cols.mutable_data_ptr<scalar_t>();
    channels_last ? im2col_nhwc(xn, cp, g) : im2col_nchw(xn, cp, g);
    // The GEMM on these columns comes next: meanwhile bring the next image
    // into L2 for its im2col (3x3 s2 channels-last bfloat16: about 2% faster).
    if (n + 1 < g.N) prefetch_block<0, 2>(xn + g.C * g.H * g.W, g.C * g.H * g.W * int64_t(sizeof(scalar_t)));
  });
}

// NCHW: one task per input plane adds its column rows into the plane (in a
// float scratch for half/bfloat16). Each plane belongs to one task: deterministic.
template <typename T>
void col2im_nchw(const T* cols, T* gin, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  constexpr bool kDirect = std::is_same_v<acc_t, T>;
  const int64_t HW = g.H * g.W;
  at::parallel_for(0, g.C, grain_for(g.kh * g.kw * g.ohw()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(kDirect ? 0 : HW);
    for (int64_t c = begin; c < end; ++c) {
      acc_t* plane = kDirect ? reinterpret_cast<acc_t*>(gin + c * HW) : scratch.data();
      std::fill(plane, plane + HW, acc_t(0));
      for (int64_t i = 0; i < g.kh; ++i) {
        const Range rh = conv_tap_outputs(i, g.H, g.OH, g.sh, g.ph, g.dh);
        for (int64_t j = 0; j < g.kw; ++j) {
          const Range rw = conv_tap_outputs(j, g.W, g.OW, g.sw, g.pw, g.dw);
          const T* row = cols + ((c * g.kh + i) * g.kw + j) * g.ohw();
          for (int64_t oh = rh.begin; oh < rh.end; ++oh) {
            acc_t* dst = plane + conv_source(oh, i, g.sh, g.ph, g.dh) * g.W + conv_source(rw.begin, j, g.sw, g.pw, g.dw);
            const T* src = row + oh * g.OW + rw.begin;
            const int64_t n = rw.end - rw.begin;
            for (int64_t t = 0; t < n; ++t) dst[t * g.sw] += static_cast<acc_t>(src[t]);
          }
        }
      }
      if (!kDirect) vec8::narrow_copy(plane, gin + c * HW, HW);
    }
  });
}

// NHWC: one task per input pixel gathers its column entries, channels vectorised.
template <typename T>
void col2im_nhwc(const T* cols, T* gin, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const int64_t K = g.C * g.kh * g.kw;
  const int64_t cg = g.cg();
  const ReaderTables rt(g);
  at::parallel_for(0, g.H * g.W, grain_for(g.C * 4), [&](int64_t begin, int64_t end) {
    acc_t acc[kLanes];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t h = p / g.W, w = p % g.W;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        int64_t c0 = 0;
        if constexpr (vec8::kSupported<T>) {
          // kRegs eight-float registers of channels at a time: the loop below
          // leaves half and bfloat16 to the compiler's slow widening (3x3 s2
          // bfloat16 backward-input 4% faster on one thread).
          const auto lanes = [&](auto regs) {
            constexpr int kRegs = decltype(regs)::value;
            vec8::f32x8 sum[kRegs] = {};
            rt.each(h, w, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
              const T* src = cols + (oh * g.OW + ow) * K + ((grp * g.kh + i) * g.kw + j) * cg + c0;
              for (int k = 0; k < kRegs; ++k) sum[k] += vec8::load<1>(src + 8 * k, 1);
            });
            T* dst = gin + p * g.C + grp * cg + c0;
            for (int k = 0; k < kRegs; ++k) vec8::store(dst + 8 * k, sum[k]);
          };
          for (; c0 + 32 <= cg; c0 += 32) lanes(std::integral_constant<int, 4>{});
          for (; c0 + 8 <= cg; c0 += 8) lanes(std::integral_constant<int, 1>{});
        }
        for (; c0 < cg; c0 += kLanes) {
          const int64_t cn = std::min(kLanes, cg - c0);
          std::fill(acc, acc + cn, acc_t(0));
          rt.each(h, w, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
            const T* src = cols + (oh * g.OW + ow) * K + ((grp * g.kh + i) * g.kw + j) * cg + c0;
            for (int64_t c = 0; c < cn; ++c) acc[c] += static_cast<acc_t>(src[c]);
          });
          T* dst = gin + p * g.C + grp * cg + c0;
          for (int64_t c = 0; c < cn; ++c) dst[c] = static_cast<T>(acc[c]);
        }
      }
    }
  });
}

void col2im(const at::Tensor& cols, const at::Tensor& grad_input, int64_t n, const Conv2dGeom& g,
            bool channels_last) {
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, cols.scalar_type(), "conv2d_col2im", [&] {
    const scalar_t* cp = cols.const_data_ptr<scalar_t>();
    scalar_t* gn = grad_input.mutable_data_ptr<scalar_t>() + n * g.C * g.H * g.W;
    channels_last ? col2im_nhwc(cp, gn, g) : col2im_nchw(cp, gn, g);
  });
}

// --- depthwise, NCHW -----------------------------------------------------------------------------
//
// A plane is first copied into a zero-padded buffer split by column phase
// modulo the stride: padded column q goes to phase q % sw, slot q / sw. Every
// tap of a row of outputs then reads (or, in the input backward, writes) a
// unit-stride run of the buffer, which vectorises for any stride and needs no
// border cases.
struct PhaseBuffer {
  int64_t rows, slots;  // padded rows; slots per phase row

  explicit PhaseBuffer(const Conv2dGeom& g)
      : rows(conv_padded_extent(g.H, g.OH, g.kh, g.sh, g.ph, g.dh)),
        slots((conv_padded_extent(g.W, g.OW, g.kw, g.sw, g.pw, g.dw) + g.sw - 1) / g.sw) {}
  int64_t size(const Conv2dGeom& g) const { return rows * g.sw * slots; }
  // Start of the run read by output row oh, tap (i, j): entry ow is the input
  // (padded) at row oh*sh + i*dh, column ow*sw + j*dw.
  int64_t tap(const Conv2dGeom& g, int64_t oh, int64_t i, int64_t j) const {
    const int64_t r = oh * g.sh + i * g.dh;
    const int64_t q = j * g.dw;
    return (r * g.sw + q % g.sw) * slots + q / g.sw;
  }
  // tap(g, oh, i, j) = oh * row_step(g) + tap_offsets(g)[i * kw + j].
  int64_t row_step(const Conv2dGeom& g) const { return tap(g, 1, 0, 0) - tap(g, 0, 0, 0); }
  std::vector<int64_t> tap_offsets(const Conv2dGeom& g) const {
    std::vector<int64_t> off(g.taps());
    for (int64_t t = 0; t < g.taps(); ++t) off[t] = tap(g, 0, t / g.kw, t % g.kw);
    return off;
  }
};

// n values of p as U (a weight widened once per call).
template <typename U, typename T>
std::vector<U> widened(const T* p, int64_t n) {
  return std::vector<U>(p, p + n);
}

template <typename T, typename acc_t>
void fill_phase_buffer(const T* plane, acc_t* buf, const PhaseBuffer& pb, const Conv2dGeom& g) {
  const int64_t row_len = g.sw * pb.slots;
  std::fill(buf, buf + g.ph * row_len, acc_t(0));
  std::fill(buf + (g.ph + g.H) * row_len, buf + pb.rows * row_len, acc_t(0));
  for (int64_t h = 0; h < g.H; ++h) {
    acc_t* row = buf + (h + g.ph) * row_len;
    for (int64_t q = 0; q < g.pw; ++q) row[(q % g.sw) * pb.slots + q / g.sw] = acc_t(0);
    for (int64_t q = g.pw + g.W; q < row_len; ++q) row[(q % g.sw) * pb.slots + q / g.sw] = acc_t(0);
    const T* src = plane + h * g.W;
    if (g.sw == 2) {
      // Even and odd columns in one pass (a vectorisable load-and-split).
      acc_t* d0 = row + (g.pw % 2) * pb.slots + g.pw / 2;
      acc_t* d1 = row + ((g.pw + 1) % 2) * pb.slots + (g.pw + 1) / 2;
      const int64_t pairs = g.W / 2;
      for (int64_t t = 0; t < pairs; ++t) {
        d0[t] = static_cast<acc_t>(src[2 * t]);
        d1[t] = static_cast<acc_t>(src[2 * t + 1]);
      }
      if (g.W % 2) d0[pairs] = static_cast<acc_t>(src[g.W - 1]);
      continue;
    }
    for (int64_t phase = 0; phase < g.sw; ++phase) {
      const int64_t w0 = ((phase - g.pw) % g.sw + g.sw) % g.sw;  // first w with (w + pw) % sw == phase
      if (w0 >= g.W) continue;
      acc_t* dst = row + phase * pb.slots + (w0 + g.pw) / g.sw;
      const int64_t n = (g.W - w0 + g.sw - 1) / g.sw;
      if (g.sw == 1) {
        for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<acc_t>(src[t]);
      } else {
        for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<acc_t>(src[w0 + g.sw * t]);
      }
    }
  }
}

// The inverse of fill_phase_buffer for the unpadded part: plane[h, w] from
// its phase slot, one unit-stride run per phase (no division per element).
template <typename T, typename acc_t>
void unsplit_phase_buffer(const acc_t* buf, T* plane, const PhaseBuffer& pb, const Conv2dGeom& g) {
  const int64_t row_len = g.sw * pb.slots;
  for (int64_t h = 0; h < g.H; ++h) {
    const acc_t* row = buf + (h + g.ph) * row_len;
    T* dst = plane + h * g.W;
    for (int64_t phase = 0; phase < g.sw; ++phase) {
      const int64_t w0 = ((phase - g.pw) % g.sw + g.sw) % g.sw;  // first w with (w + pw) % sw == phase
      if (w0 >= g.W) continue;
      const acc_t* src = row + phase * pb.slots + (w0 + g.pw) / g.sw;
      const int64_t n = (g.W - w0 + g.sw - 1) / g.sw;
      if (g.sw == 1) {
        for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<T>(src[t]);
      } else if (g.sw == 2) {
        for (int64_t t = 0; t < n; ++t) dst[w0 + 2 * t] = static_cast<T>(src[t]);
      } else {
        for (int64_t t = 0; t < n; ++t) dst[w0 + g.sw * t] = static_cast<T>(src[t]);
      }
    }
  }
}

template <typename T>
void depthwise_forward_nchw(const T* x, const T* wt, const T* bias, T* y, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const PhaseBuffer pb(g);
  const int64_t m = g.OC / g.C;
  const int64_t row_step = pb.row_step(g);
  const std::vector<int64_t> tap_off = pb.tap_offsets(g);
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(pb.size(g) + kBlock);  // slack for the last block's reads
    std::vector<acc_t> wv(g.taps());
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.C, c = t % g.C;
      fill_phase_buffer(x + t * g.H * g.W, buf.data(), pb, g);
      for (int64_t r = 0; r < m; ++r) {
        const int64_t oc = c * m + r;
        const T* w = wt + oc * g.taps();
        const acc_t b = bias ? static_cast<acc_t>(bias[oc]) : acc_t(0);
        T* out = y + (n * g.OC + oc) * g.ohw();
        for (int64_t t = 0; t < g.taps(); ++t) wv[t] = static_cast<acc_t>(w[t]);
        if constexpr (std::is_same_v<acc_t, float>) {
          // kR output rows of kBlock outputs in registers, each tap's weight broadcast once for them.
          const auto rows = [&](int64_t oh, auto r) {
            constexpr int kR = decltype(r)::value;
            for (int64_t ow0 = 0; ow0 < g.OW; ow0 += kBlock) {
              vec8::f32x8 v[kR][kBlock / 8];
              for (auto& row : v) {
                for (auto& e : row) e = vec8::broadcast(b);
              }
              for (int64_t t = 0; t < g.taps(); ++t) {  // vec8::fmadd: the compiler leaves std::fma scalar
                const vec8::f32x8 wt = vec8::broadcast(wv[t]);
                const acc_t* src = buf.data() + oh * row_step + tap_off[t] + ow0;
                for (int q = 0; q < kR; ++q) {
                  for (int64_t e = 0; e < kBlock / 8; ++e) {
                    v[q][e] = vec8::fmadd(wt, vec8::load_raw<vec8::f32x8>(src + q * row_step + 8 * e), v[q][e]);
                  }
                }
              }
              const int64_t n_out = std::min(kBlock, g.OW - ow0);
              for (int q = 0; q < kR; ++q) {
                T* o = out + (oh + q) * g.OW + ow0;
                if (n_out == kBlock) {
                  for (int64_t e = 0; e < kBlock / 8; ++e) vec8::store(o + 8 * e, v[q][e]);
                } else {
                  acc_t a[kBlock];
                  std::memcpy(a, v[q], sizeof(a));
                  for (int64_t l = 0; l < n_out; ++l) o[l] = static_cast<T>(a[l]);
                }
              }
            }
          };
          // Two rows at a time for float32 (the --quick shape 0.35 -> 0.30 ms); bfloat16 measured slower.
          int64_t oh = 0;
          if constexpr (std::is_same_v<T, float>) {
            for (; oh + 2 <= g.OH; oh += 2) rows(oh, std::integral_constant<int, 2>{});
          }
          for (; oh < g.OH; ++oh) rows(oh, std::integral_constant<int, 1>{});
        } else {
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const acc_t* row = buf.data() + oh * row_step;
            for (int64_t ow0 = 0; ow0 < g.OW; ow0 += kBlock) {
              acc_t a[kBlock];
              for (int64_t l = 0; l < kBlock; ++l) a[l] = b;
              for (int64_t t = 0; t < g.taps(); ++t) {
                const acc_t* src = row + tap_off[t] + ow0;
                for (int64_t l = 0; l < kBlock; ++l) a[l] = mul_add(wv[t], src[l], a[l]);
              }
              const int64_t n_out = std::min(kBlock, g.OW - ow0);
              for (int64_t l = 0; l < n_out; ++l) out[oh * g.OW + ow0 + l] = static_cast<T>(a[l]);
            }
          }
        }
      }
    }
  });
}

// Input gradient: each task owns one input plane, adds every tap's
// contribution into a phase buffer in a fixed order, then un-splits it.
template <typename T>
void depthwise_backward_input_nchw(const T* gout, const T* wt, T* gin, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const PhaseBuffer pb(g);
  const int64_t m = g.OC / g.C;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(pb.size(g));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.C, c = t % g.C;
      std::fill(buf.begin(), buf.end(), acc_t(0));
      for (int64_t r = 0; r < m; ++r) {
        const int64_t oc = c * m + r;
        const T* w = wt + oc * g.taps();
        const T* go = gout + (n * g.OC + oc) * g.ohw();
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const T* grow = go + oh * g.OW;
          for (int64_t i = 0; i < g.kh; ++i) {
            for (int64_t j = 0; j < g.kw; ++j) {
              const acc_t wv = static_cast<acc_t>(w[i * g.kw + j]);
              acc_t* dst = buf.data() + pb.tap(g, oh, i, j);
              for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow] += wv * static_cast<acc_t>(grow[ow]);
            }
          }
        }
      }
      unsplit_phase_buffer(buf.data(), gin + t * g.H * g.W, pb, g);
    }
  });
}

// A dot product summed in fixed lanes (vectorised, same order every run).
template <typename T, typename acc_t>
inline acc_t lane_dot(const T* a, const acc_t* b, int64_t n) {
  constexpr int64_t L = 16;
  acc_t lanes[L] = {};
  int64_t t = 0;
  for (; t + L <= n; t += L) {
    for (int64_t l = 0; l < L; ++l) lanes[l] += static_cast<acc_t>(a[t + l]) * b[t + l];
  }
  for (; t < n; ++t) lanes[t % L] += static_cast<acc_t>(a[t]) * b[t];
  acc_t s = acc_t(0);
  for (int64_t l = 0; l < L; ++l) s += lanes[l];
  return s;
}

// part[t] = sum over the outputs of go times the phase buffer at tap t
// (offset tap_off[t], row_step per output row), for up to kTapLanes taps:
// eight outputs at a time, each loaded once for every tap, in eight lanes per
// tap summed at the end (a row's last outputs through a zeroed copy and
// masked loads, which read nothing past them).
constexpr int64_t kTapLanes = 12;

template <typename T>
void tap_dots8(const T* go, const float* buf, const int64_t* tap_off, int64_t taps, int64_t row_step,
               const Conv2dGeom& g, float* part) {
  vec8::f32x8 acc[kTapLanes] = {};
  const int64_t full = g.OW / 8 * 8, rest = g.OW - full;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const T* grow = go + oh * g.OW;
    const float* brow = buf + oh * row_step;
    for (int64_t ow = 0; ow < full; ow += 8) {
      const vec8::f32x8 v = vec8::load<1>(grow + ow, 1);
      for (int64_t t = 0; t < taps; ++t) {
        acc[t] = vec8::fmadd(v, vec8::load_raw<vec8::f32x8>(brow + tap_off[t] + ow), acc[t]);
      }
    }
    if (rest > 0) {
      float v[8] = {};
      for (int64_t l = 0; l < rest; ++l) v[l] = static_cast<float>(grow[full + l]);
      const vec8::f32x8 tail = vec8::load_raw<vec8::f32x8>(v);
#if defined(__AVX2__)
      const __m256i lanes = vec8::bit_cast<__m256i>(vec8::iota() < vec8::broadcast(int32_t(rest)));
#endif
      for (int64_t t = 0; t < taps; ++t) {
#if defined(__AVX2__)
        const vec8::f32x8 b = vec8::bit_cast<vec8::f32x8>(_mm256_maskload_ps(brow + tap_off[t] + full, lanes));
#else
        float bs[8] = {};
        std::copy(brow + tap_off[t] + full, brow + tap_off[t] + g.OW, bs);
        const vec8::f32x8 b = vec8::load_raw<vec8::f32x8>(bs);
#endif
        acc[t] = vec8::fmadd(tail, b, acc[t]);
      }
    }
  }
  for (int64_t t = 0; t < taps; ++t) {
    float s = 0.f;
    for (int l = 0; l < 8; ++l) s += acc[t][l];
    part[t] = s;
  }
}

// Weight gradient: per (image, channel) partial sums, then a sum over images in
// image order, so the result does not depend on the thread count.
template <typename T>
void depthwise_backward_weight_nchw(const T* gout, const T* x, T* gw, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const PhaseBuffer pb(g);
  const int64_t m = g.OC / g.C;
  const int64_t taps = g.taps();
  std::vector<acc_t> partial(g.N * g.OC * taps);
  const int64_t row_step = pb.row_step(g);
  const std::vector<int64_t> tap_off = pb.tap_offsets(g);
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(pb.size(g));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.C, c = t % g.C;
      fill_phase_buffer(x + t * g.H * g.W, buf.data(), pb, g);
      for (int64_t r = 0; r < m; ++r) {
        const int64_t oc = c * m + r;
        const T* go = gout + (n * g.OC + oc) * g.ohw();
        acc_t* part = partial.data() + (n * g.OC + oc) * taps;
        if constexpr (vec8::kSupported<T>) {
          if (taps <= kTapLanes) {
            tap_dots8(go, buf.data(), tap_off.data(), taps, row_step, g, part);
            continue;
          }
        }
        for (int64_t i = 0; i < g.kh; ++i) {
          for (int64_t j = 0; j < g.kw; ++j) {
            acc_t s = acc_t(0);
            for (int64_t oh = 0; oh < g.OH; ++oh) s += lane_dot(go + oh * g.OW, buf.data() + pb.tap(g, oh, i, j), g.OW);
            part[i * g.kw + j] = s;
          }
        }
      }
    }
  });
  at::parallel_for(0, g.OC * taps, 256, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      acc_t s = acc_t(0);
      for (int64_t n = 0; n < g.N; ++n) s += partial[n * g.OC * taps + e];
      gw[e] = static_cast<T>(s);
    }
  });
}

// --- depthwise, NHWC (channel multiplier 1) -------------------------------------------------------
// The weight is passed transposed to (kh*kw, C) so each tap is a channel vector.

// One block of m channels of one output pixel: bias, then the pixel's nt
// in-range taps (input pixel offset src[t] elements from xn, weight row wrow[t]),
// in row-major order, summed in registers (kB > 0 fixes m) or through L1
// (kB == 0, m <= kLanes), each tap prefetching its block `ahead` on.
template <int kB, typename T, typename acc_t>
inline void depthwise_nhwc_block(const T* xn, const acc_t* wv, const T* bias, T* y, const int64_t* src,
                                 const int64_t* wrow, int64_t nt, int64_t m, int64_t ahead) {
  constexpr int64_t kCap = kB > 0 ? kB : kLanes;
  if (kB > 0) m = kB;
  acc_t acc[kCap];
  for (int64_t c = 0; c < m; ++c) acc[c] = bias ? static_cast<acc_t>(bias[c]) : acc_t(0);
  for (int64_t t = 0; t < nt; ++t) {
    const T* in = xn + src[t];
    if (kB > 0) prefetch_block<kB * sizeof(T)>(in + ahead);
    const acc_t* wt = wv + wrow[t];
    for (int64_t c = 0; c < m; ++c) acc[c] = mul_add(wt[c], static_cast<acc_t>(in[c]), acc[c]);
  }
  for (int64_t c = 0; c < m; ++c) y[c] = static_cast<T>(acc[c]);
}

// kU outputs of a row (ustep elements apart in x) whose taps are all in
// range, 8*kV channels: each tap's weights are loaded once for the kU outputs.
// Same sums as depthwise_nhwc_block (bias, then each tap's fused multiply-add).
template <int kU, int kV, typename T>
inline void depthwise_nhwc_tile(const T* x, int64_t ustep, const float* wv, const T* bias, T* y, int64_t C,
                                const int64_t* src, const int64_t* wrow, int64_t nt) {
  using vec8::f32x8;
  f32x8 acc[kU][kV];
  for (int v = 0; v < kV; ++v) {
    const f32x8 b = bias ? vec8::load<1>(bias + 8 * v, 1) : f32x8{};
    for (int u = 0; u < kU; ++u) acc[u][v] = b;
  }
  for (int64_t t = 0; t < nt; ++t) {
    const T* in = x + src[t];
    f32x8 wk[kV];
    for (int v = 0; v < kV; ++v) wk[v] = vec8::load_raw<f32x8>(wv + wrow[t] + 8 * v);
    for (int u = 0; u < kU; ++u) {
      for (int v = 0; v < kV; ++v) acc[u][v] = vec8::fmadd(wk[v], vec8::load<1>(in + u * ustep + 8 * v, 1), acc[u][v]);
    }
  }
  for (int u = 0; u < kU; ++u) {
    for (int v = 0; v < kV; ++v) vec8::store(y + u * C + 8 * v, acc[u][v]);
  }
}

#if defined(__x86_64__)
// depthwise_nhwc_tile in sixteen-float registers (AVX-512F, chosen at run
// time): the same lane arithmetic, so the same bits; `stream` as
// vec16::store's.
template <int kU, int kV, typename T>
__attribute__((target("avx512f"))) void depthwise_nhwc_tile16(const T* x, int64_t ustep, const float* wv,
                                                              const T* bias, T* y, int64_t C, const int64_t* src,
                                                              const int64_t* wrow, int64_t nt, bool stream) {
  __m512 acc[kU][kV];
  for (int v = 0; v < kV; ++v) {
    const __m512 b = bias ? vec16::load(bias + 16 * v) : _mm512_setzero_ps();
    for (int u = 0; u < kU; ++u) acc[u][v] = b;
  }
  for (int64_t t = 0; t < nt; ++t) {
    const T* in = x + src[t];
    __m512 wk[kV];
    for (int v = 0; v < kV; ++v) wk[v] = _mm512_loadu_ps(wv + wrow[t] + 16 * v);
    for (int u = 0; u < kU; ++u) {
      for (int v = 0; v < kV; ++v) acc[u][v] = _mm512_fmadd_ps(wk[v], vec16::load(in + u * ustep + 16 * v), acc[u][v]);
    }
  }
  for (int u = 0; u < kU; ++u) {
    for (int v = 0; v < kV; ++v) vec16::store(y + u * C + 16 * v, acc[u][v], stream);
  }
}

// Thirty-two channels as two sixteen-float registers, and back: bfloat16
// splits each dword into its even and odd channel (vec16::load2_pair: one load
// and two bit operations), so its weights and sums keep that order too
// (weights_in_pairs); the other types take channels 0-15 and 16-31.
template <typename T>
__attribute__((target("avx512f"))) inline void load32(const T* p, __m512& a, __m512& b) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    vec16::load2_pair(p, a, b);
  } else {
    a = vec16::load(p);
    b = vec16::load(p + 16);
  }
}

template <typename T>
__attribute__((target("avx512f"))) inline void store32(T* p, __m512 a, __m512 b, bool stream) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    vec16::store_pair(p, a, b, stream);
  } else {
    vec16::store(p, a, stream);
    vec16::store(p + 16, b, stream);
  }
}

// Lines the rows tile prefetches into L2 as it reads each input pixel, spread
// through its taps rather than issued together before it: for each window row
// r, the pixel `far` elements on, and for r < rows_below, the pixel below[r]
// elements on (the rows the next output row adds). Issued together, the same
// prefetches left this tile slower from memory than depthwise_nhwc_tile16
// (MobileNet bfloat16, two threads: 3.0-3.1 ms against 2.3-2.7; spread: 1.6-1.7).
struct TilePrefetch {
  int64_t far = 0;
  const int64_t* below = nullptr;
  int64_t rows_below = 0;
};

// depthwise_nhwc_tile16<kU, 2> for a kernel kKW wide at stride kSW and
// dilation 1 (rows of kKW taps from src[r * kKW], wrow[r * kKW]; wp as
// load32 orders it): each input pixel of a window row is loaded once and
// multiplied into every output that reads it (a 3-wide stride-2 row of eight
// outputs loads 17 pixels for 24 taps). Each output still takes its taps in
// row-major order, so the sums are the same bits.
template <int kU, int kKW, int kSW, typename T>
__attribute__((target("avx512f"))) void depthwise_nhwc_rows16(const T* x, const float* wp, const T* bias, T* y,
                                                              int64_t C, const int64_t* src, const int64_t* wrow,
                                                              int64_t rows, bool stream, const TilePrefetch& pf) {
  __m512 acc[kU][2];
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (bias) load32(bias, b0, b1);
#pragma GCC unroll 16
  for (int u = 0; u < kU; ++u) {
    acc[u][0] = b0;
    acc[u][1] = b1;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + src[r * kKW];
    const T* far = pf.far ? in + pf.far : nullptr;
    const T* below = r < pf.rows_below ? x + pf.below[r] : nullptr;
    const float* w = wp + wrow[r * kKW];
    __m512 wk[kKW][2];
#pragma GCC unroll 16
    for (int j = 0; j < kKW; ++j) {
      wk[j][0] = _mm512_loadu_ps(w + j * C);
      wk[j][1] = _mm512_loadu_ps(w + j * C + 16);
    }
#pragma GCC unroll 64
    for (int q = 0; q < (kU - 1) * kSW + kKW; ++q) {
      for (int64_t l = 0; l < 32; l += 64 / sizeof(T)) {  // the pixel's lines of these 32 channels
        if (far) __builtin_prefetch(far + q * C + l, 0, 2);
        if (below) __builtin_prefetch(below + q * C + l, 0, 2);
      }
      __m512 a, b;
      load32(in + q * C, a, b);
#pragma GCC unroll 16
      for (int j = 0; j < kKW; ++j) {
        const int d = q - j;  // output d / kSW reads pixel q through tap j
        if (d < 0 || d % kSW != 0 || d / kSW >= kU) continue;
        acc[d / kSW][0] = _mm512_fmadd_ps(wk[j][0], a, acc[d / kSW][0]);
        acc[d / kSW][1] = _mm512_fmadd_ps(wk[j][1], b, acc[d / kSW][1]);
      }
    }
  }
#pragma GCC unroll 16
  for (int u = 0; u < kU; ++u) store32(y + u * C, acc[u][0], acc[u][1], stream);
}

template <typename T>
using RowsTile16 = void (*)(const T*, const float*, const T*, T*, int64_t, const int64_t*, const int64_t*, int64_t,
                            bool, const TilePrefetch&);

// depthwise_nhwc_rows16 of eight outputs for g's kernel, if one is built for it.
template <typename T>
RowsTile16<T> rows_tile16_for(const Conv2dGeom& g) {
  if (g.dw != 1) return nullptr;
  if (g.kw == 3 && g.sw == 2) return depthwise_nhwc_rows16<8, 3, 2, T>;
  if (g.kw == 3 && g.sw == 1) return depthwise_nhwc_rows16<8, 3, 1, T>;
  if (g.kw == 5 && g.sw == 2) return depthwise_nhwc_rows16<8, 5, 2, T>;
  if (g.kw == 5 && g.sw == 1) return depthwise_nhwc_rows16<8, 5, 1, T>;
  return nullptr;
}

// The (taps, C) weights with each whole block of 32 channels in load32's order.
template <typename T>
std::vector<float> weights_in_pairs(const std::vector<float>& wv, int64_t taps, int64_t C) {
  std::vector<float> wp(wv);
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t c = 0; c + 32 <= C; c += 32) {
        for (int64_t k = 0; k < 16; ++k) {
          wp[t * C + c + k] = wv[t * C + c + 2 * k];
          wp[t * C + c + 16 + k] = wv[t * C + c + 2 * k + 1];
        }
      }
    }
  }
  return wp;
}
#endif

// Channels [c0, C) of one output pixel, as depthwise_nhwc_block sums them:
// with AVX-512 (wide: avx512_enabled(), read once by the caller), 32 at a time
// in one-output tiles, then in register blocks.
template <typename T, typename acc_t>
void depthwise_nhwc_pixel(const T* xn, const acc_t* wv, const T* bias, T* y, const int64_t* src, const int64_t* wrow,
                          int64_t nt, int64_t C, int64_t c0, int64_t ahead, bool wide) {
  constexpr int kB = (sizeof(T) == sizeof(acc_t) ? 256 : 128) / sizeof(acc_t);  // accumulators in AVX2 registers
  const auto bias_at = [&] { return bias ? bias + c0 : bias; };
#if defined(__x86_64__)
  if constexpr (vec8::kSupported<T>) {
    if (wide) {
      for (; c0 + 32 <= C; c0 += 32) {
        depthwise_nhwc_tile16<1, 2>(xn + c0, 0, wv + c0, bias_at(), y + c0, C, src, wrow, nt, false);
      }
    }
  }
#endif
  for (; c0 + kB <= C; c0 += kB) {
    depthwise_nhwc_block<kB>(xn + c0, wv + c0, bias_at(), y + c0, src, wrow, nt, kB, ahead);
  }
  for (; c0 + kB / 4 <= C; c0 += kB / 4) {
    depthwise_nhwc_block<kB / 4>(xn + c0, wv + c0, bias_at(), y + c0, src, wrow, nt, kB / 4, ahead);
  }
  for (; c0 < C; c0 += kLanes) {
    depthwise_nhwc_block<0>(xn + c0, wv + c0, bias_at(), y + c0, src, wrow, nt, std::min(kLanes, C - c0), ahead);
  }
}

// One task per run of output pixels, channels blocked in registers. Float
// types sweep the outputs of a row whose taps all lie in range a tile at a
// time (depthwise_nhwc_tile: eight outputs with AVX-512, else four); the
// others (and runs shorter than a tile), and channels past the last 8, go
// pixel by pixel, with AVX-512 in one-output tiles of 32 channels (the
// --quick shape in bfloat16 0.179 -> 0.173 ms on one thread).
template <typename T>
void depthwise_forward_nhwc(const T* x, const T* wtc, const T* bias, T* y, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const int64_t C = g.C;
  const int64_t C8 = vec8::kSupported<T> ? C / 8 * 8 : 0;
  const bool wide = avx512_enabled();
  // Outputs per tile: eight in AVX-512's 32 registers (MobileNet bfloat16 120 -> 106 us/image), else four.
  const int64_t tile = wide ? 8 : 4;
  const std::vector<acc_t> wv = widened<acc_t>(wtc, g.taps() * C);
  // The pixel path's taps prefetch their block `ahead` on: about 16 KiB for
  // half and bfloat16, 4 KiB for float32, the distances the tiles measured best
  // before they prefetched as below (MobileNet bfloat16 3.4 -> 2.9 ms).
  const int64_t ahead = prefetch_ahead(g.sw * C, sizeof(T)) * (sizeof(T) == 2 ? 4 : 1);
  // Tiles of an input read from memory rather than the cache prefetch three
  // ways: their rows about 64 KiB further on into L2, the rows the next output row
  // adds into L2, and (but for the rows tile, see TilePrefetch) their own lines
  // into L1 before they start (MobileNet bfloat16: one thread 5.4 -> 4.0 ms, two
  // 2.5 -> 2.0). In the cache, prefetching only cost time (the --quick shape
  // 0.20 -> 0.18 ms without).
  const bool from_memory = g.N * g.H * g.W * C * int64_t(sizeof(T)) >= kStreamBytes;
  const int64_t far_ahead = prefetch_ahead(g.sw * C, sizeof(T)) * 16;
  const Range inner = conv_inner_outputs(g.W, g.OW, g.kw, g.sw, g.pw, g.dw);
  // Large outputs bypass the cache from the AVX-512 tiles, whose stores of
  // sixteen channels are aligned when the pixels are 64-byte aligned.
  const int64_t pixel_bytes = C * int64_t(sizeof(T));
  const bool stream = wide && stream_output(y, g.N * g.OH * g.OW * pixel_bytes, pixel_bytes) &&
                      pixel_bytes % 64 == 0 && reinterpret_cast<uintptr_t>(y) % 64 == 0;
#if defined(__x86_64__)
  // Whole blocks of 32 channels of the tiles go through depthwise_nhwc_rows16 where g's kernel has one.
  RowsTile16<T> rows_tile = nullptr;
  std::vector<float> wp;
  if constexpr (vec8::kSupported<T>) {
    rows_tile = wide ? rows_tile16_for<T>(g) : nullptr;
    if (rows_tile) wp = weights_in_pairs<T>(wv, g.taps(), C);
  }
#endif
  at::parallel_for(0, g.N * g.OH * g.OW, grain_for(C * g.taps()), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> src(g.taps()), wrow(g.taps()), tile_src(g.taps()), tile_wrow(g.taps());
    // Channels [c0, C) of output pixel p.
    auto pixel = [&](int64_t p, int64_t c0) {
      const int64_t ow = p % g.OW, oh = (p / g.OW) % g.OH;
      const T* xn = x + (p / g.ohw()) * g.H * g.W * C;
      int64_t nt = 0;
      for_each_source_tap(g, oh, ow, [&](int64_t i, int64_t j, int64_t h, int64_t w) {
        src[nt] = (h * g.W + w) * C;
        wrow[nt++] = (i * g.kw + j) * C;
      });
      depthwise_nhwc_pixel(xn, wv.data(), bias, y + p * C, src.data(), wrow.data(), nt, C, c0, ahead, wide);
    };
    for (int64_t p = begin; p < end;) {
      const int64_t row = p / g.OW, ow = p % g.OW;
      const int64_t lo = std::max(ow, inner.begin);
      const int64_t count = C8 > 0 ? std::max<int64_t>(0, std::min(end - row * g.OW, inner.end) - lo) : 0;
      if (ow < lo || count < tile) {
        pixel(p++, 0);
        continue;
      }
      // The last tile reaches back to end with the run (its outputs, computed twice, are the same bits):
      // the pixel path had taken a third of the time for its 3 outputs in 56 (MobileNet, float 100 -> 70 us/image).
      const int64_t tiles = (count + tile - 1) / tile;
      // Tiles from lo: the taps of output lo, shifted by the tile's offset.
      const int64_t oh = row % g.OH;
      const T* xn = x + (row / g.OH) * g.H * g.W * C;
      int64_t nt = 0;
      for_each_source_tap(g, oh, lo, [&](int64_t i, int64_t j, int64_t h, int64_t w) {
        tile_src[nt] = (h * g.W + w) * C;
        tile_wrow[nt++] = (i * g.kw + j) * C;
      });
      const int64_t ustep = g.sw * C, nrows = nt / g.kw;
      // The rows below the window that the next output row reads.
      const int64_t last_row = oh * g.sh - g.ph + (g.kh - 1) * g.dh;
      const int64_t next_rows = std::max<int64_t>(0, std::min(g.H - 1 - last_row, g.sh));
      const int64_t next_at = ((last_row + 1) * g.W + lo * g.sw - g.pw) * C;
      const auto sweep = [&](auto outputs) {
        constexpr int kU = decltype(outputs)::value;
        const float* w = wv.data();
        for (int64_t k = 0; k < tiles; ++k) {
          const int64_t u0 = std::min(k * kU, count - kU);
          const T* xt = xn + u0 * ustep;
          T* yt = y + (p + u0) * C;
          int64_t c = 0;
#if defined(__x86_64__)
          if (kU == 8 && rows_tile) {
            int64_t below[4];
            TilePrefetch pf;
            if (from_memory) {
              pf = TilePrefetch{far_ahead, below, std::min<int64_t>(next_rows, 4)};
              for (int64_t r = 0; r < pf.rows_below; ++r) below[r] = next_at + r * g.W * C;
            }
            for (; c + 32 <= C8; c += 32) {
              rows_tile(xt + c, wp.data() + c, bias ? bias + c : bias, yt + c, C, tile_src.data(), tile_wrow.data(),
                        nrows, stream, pf);
            }
          }
#endif
          if (from_memory && c < C8) {
            const int64_t bytes = kU * ustep * int64_t(sizeof(T));
            for (int64_t r = 0; r < nrows; ++r) prefetch_block<0, 2>(xt + tile_src[r * g.kw] + far_ahead, bytes);
            for (int64_t r = 0; r < next_rows; ++r) {
              prefetch_block<0, 2>(xn + next_at + r * g.W * C + u0 * ustep, bytes);
            }
            for (int64_t r = 0; r < nrows; ++r) prefetch_block<0>(xt + tile_src[r * g.kw], bytes);
          }
#if defined(__x86_64__)
          if (wide) {
            for (; c + 32 <= C8; c += 32) {
              depthwise_nhwc_tile16<kU, 2>(xt + c, ustep, w + c, bias ? bias + c : bias, yt + c, C, tile_src.data(),
                                           tile_wrow.data(), nt, stream);
            }
          }
#endif
          if constexpr (kU == 4) {  // eight outputs of two blocks would not fit AVX2's 16 registers
            for (; c + 16 <= C8; c += 16) {
              depthwise_nhwc_tile<kU, 2>(xt + c, ustep, w + c, bias ? bias + c : bias, yt + c, C, tile_src.data(),
                                         tile_wrow.data(), nt);
            }
          }
          for (; c < C8; c += 8) {
            depthwise_nhwc_tile<kU, 1>(xt + c, ustep, w + c, bias ? bias + c : bias, yt + c, C, tile_src.data(),
                                       tile_wrow.data(), nt);
          }
          if (C8 < C) {
            for (int64_t u = 0; u < kU; ++u) pixel(p + u0 + u, C8);
          }
        }
      };
      if constexpr (vec8::kSupported<T>) {
        wide ? sweep(std::integral_constant<int, 8>{}) : sweep(std::integral_constant<int, 4>{});
      }
      p += count;
    }
    if (stream) vec8::stream_fence();
  });
}

template <typename T>
void depthwise_backward_input_nhwc(const T* gout, const T* wtc, T* gin, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const int64_t C = g.C;
  const ReaderTables rt(g);
  const std::vector<acc_t> wv = widened<acc_t>(wtc, g.taps() * C);
  const bool wide = avx512_enabled();
  at::parallel_for(0, g.N * g.H, grain_for(g.W * C * g.taps()), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> src(g.taps()), wrow(g.taps());
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, h = row % g.H;
      const T* gn = gout + n * g.ohw() * C;
      for (int64_t w = 0; w < g.W; ++w) {
        int64_t nt = 0;
        rt.each(h, w, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
          src[nt] = (oh * g.OW + ow) * C;
          wrow[nt++] = (i * g.kw + j) * C;
        });
        depthwise_nhwc_pixel(gn, wv.data(), static_cast<const T*>(nullptr), gin + (row * g.W + w) * C, src.data(),
                             wrow.data(), nt, C, 0, 0, wide);
      }
    }
  });
}

// Per-image partial sums (taps, C), then a sum over images in image order.
template <typename T>
void depthwise_backward_weight_nhwc(const T* gout, const T* x, T* gw, const Conv2dGeom& g) {
  using acc_t = at::opmath_type<T>;
  const int64_t C = g.C;
  const int64_t taps = g.taps();
  std::vector<acc_t> partial(g.N * taps * C, acc_t(0));
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * g.H * g.W * C;
      acc_t* part = partial.data() + n * taps * C;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const T* go = gout + ((n * g.OH + oh) * g.OW + ow) * C;
          for_each_source_tap(g, oh, ow, [&](int64_t i, int64_t j, int64_t h, int64_t w) {
            const T* src = xn + (h * g.W + w) * C;
            acc_t* dst = part + (i * g.kw + j) * C;
            for (int64_t c = 0; c < C; ++c) dst[c] += static_cast<acc_t>(go[c]) * static_cast<acc_t>(src[c]);
          });
        }
      }
    }
  });
  at::parallel_for(0, taps * C, 256, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      acc_t s = acc_t(0);
      for (int64_t n = 0; n < g.N; ++n) s += partial[n * taps * C + e];
      const int64_t t = e / C, c = e % C;
      gw[c * taps + t] = static_cast<T>(s);
    }
  });
}

// The NHWC kernels take one output channel per input channel; a depthwise
// conv with a channel multiplier runs the NCHW kernels on converted copies.
bool nhwc_kernels_apply(const Conv2dGeom& g, bool channels_last) { return channels_last && g.OC == g.C; }

at::Tensor taps_by_channel(const at::Tensor& weight, const Conv2dGeom& g) {
  return weight.view({g.OC, g.taps()}).t().contiguous();
}

void depthwise_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                       const Conv2dGeom& g, bool channels_last) {
  if (channels_last && !nhwc_kernels_apply(g, channels_last)) {
    const at::Tensor tmp = at::empty(out.sizes(), out.options());
    depthwise_forward(x.contiguous(), weight, bias, tmp, g, false);
    out.copy_(tmp);
    return;
  }
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_depthwise", [&] {
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    if (channels_last) {
      const at::Tensor wtc = taps_by_channel(weight, g);
      depthwise_forward_nhwc(x.const_data_ptr<scalar_t>(), wtc.const_data_ptr<scalar_t>(), b,
                             out.mutable_data_ptr<scalar_t>(), g);
    } else {
      depthwise_forward_nchw(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), b,
                             out.mutable_data_ptr<scalar_t>(), g);
    }
  });
}

void depthwise_backward_input(const at::Tensor& gout, const at::Tensor& weight, const at::Tensor& gin,
                              const Conv2dGeom& g, bool channels_last) {
  if (channels_last && !nhwc_kernels_apply(g, channels_last)) {
    const at::Tensor tmp = at::empty(gin.sizes(), gin.options());
    depthwise_backward_input(gout.contiguous(), weight, tmp, g, false);
    gin.copy_(tmp);
    return;
  }
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "conv2d_depthwise_backward_input", [&] {
    if (channels_last) {
      const at::Tensor wtc = taps_by_channel(weight, g);
      depthwise_backward_input_nhwc(gout.const_data_ptr<scalar_t>(), wtc.const_data_ptr<scalar_t>(),
                                    gin.mutable_data_ptr<scalar_t>(), g);
    } else {
      depthwise_backward_input_nchw(gout.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                    gin.mutable_data_ptr<scalar_t>(), g);
    }
  });
}

void depthwise_backward_weight(const at::Tensor& gout, const at::Tensor& x, const at::Tensor& gw, const Conv2dGeom& g,
                               bool channels_last) {
  if (channels_last && !nhwc_kernels_apply(g, channels_last)) {
    depthwise_backward_weight(gout.contiguous(), x.contiguous(), gw, g, false);
    return;
  }
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, gout.scalar_type(), "conv2d_depthwise_backward_weight", [&] {
    const scalar_t* gp = gout.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* wp = gw.mutable_data_ptr<scalar_t>();
    channels_last ? depthwise_backward_weight_nhwc(gp, xp, wp, g) : depthwise_backward_weight_nchw(gp, xp, wp, g);
  });
}

const ConvKernels kCpuKernels{&im2col,
                              &col2im,
                              &depthwise_forward,
                              &depthwise_backward_input,
                              &depthwise_backward_weight,
                              &dense_forward,
                              &dense_backward_input,
                              &dense_backward_weight,
                              &channels_last_copy,
                              /*parallel_images=*/true};

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return run_conv2d(input, weight, bias, stride, padding, dilation, groups, kCpuKernels);
}

at::Tensor conv2d_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups) {
  return run_conv2d_backward_input(grad_output, weight, input_size, stride, padding,
                                   dilation, groups, kCpuKernels);
}

at::Tensor conv2d_backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                      at::IntArrayRef weight_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return run_conv2d_backward_weight(grad_output, input, weight_size, stride, padding,
                                    dilation, groups, kCpuKernels);
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, CPU, m) {
  m.impl("conv2d", &poolops::conv2d_cpu);
  m.impl("_conv2d_backward_input", &poolops::conv2d_backward_input_cpu);
  m.impl("_conv2d_backward_weight", &poolops::conv2d_backward_weight_cpu);
}
