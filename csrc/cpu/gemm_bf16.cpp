// gemm_bf16_gathered_b (gemm.h): bfloat16 A and B, float sums, with
// AVX512-BF16's vdpbf16ps. K goes in pairs: a packed A strip holds, per pair
// of k, MR rows' two elements side by side (one 32-bit broadcast), a packed B
// strip NR columns' two (two zmm). A 14 x 32 register tile of 28 float
// accumulators runs over each strip pair, as in gemm_f32. The threads split
// the columns of C, each packing its own strips of B from the gathered rows,
// and sweep all the rows of A; each element of C is summed by one thread in
// one fixed order.
#include "gemm.h"

#include "gemm_tile.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace poolops {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

constexpr int64_t MR = kTileRows, NR = kTileCols, KC = 512, MC = MR * 12, NC = 512;

#define POOLOPS_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// Indices for vpermt2w: lanes 2i and 2i + 1 take element `from + i` of the
// first and of the second operand.
POOLOPS_TARGET_BF16 inline __m512i interleave_index(int from) {
  alignas(64) uint16_t idx[32];
  for (int i = 0; i < 16; ++i) {
    idx[2 * i] = static_cast<uint16_t>(from + i);
    idx[2 * i + 1] = static_cast<uint16_t>(32 + from + i);
  }
  return _mm512_load_si512(idx);
}

// Rows [0, mc) of A's block (element (i, k) at A[i * rsa + k * csa]) for
// k < kc, in strips of MR rows: dst[(s * pairs + p) * MR + i] holds elements
// (s * MR + i, 2p) and (s * MR + i, 2p + 1), zeros past mc and kc.
POOLOPS_TARGET_BF16 void pack_a(int64_t mc, int64_t kc, const c10::BFloat16* A, int64_t rsa, int64_t csa,
                                uint32_t* dst) {
  const int64_t pairs = (kc + 1) / 2;
  const __m512i lo_index = interleave_index(0);
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t n = std::min(MR, mc - i0);
    for (int64_t p = 0; p < pairs; ++p, dst += MR) {
      const c10::BFloat16* e = A + i0 * rsa + 2 * p * csa;
      const bool odd = 2 * p + 1 == kc;
      if (rsa == 1 && !odd) {  // two runs of n elements, interleaved
        const __mmask32 m = (__mmask32(1) << n) - 1;
        const __m512i a = _mm512_maskz_loadu_epi16(m, e), b = _mm512_maskz_loadu_epi16(m, e + csa);
        _mm512_mask_storeu_epi32(dst, __mmask16((1u << MR) - 1), _mm512_permutex2var_epi16(a, lo_index, b));
        continue;
      }
      for (int64_t i = 0; i < MR; ++i) {
        const uint32_t l = i < n ? e[i * rsa].x : 0;
        const uint32_t h = i < n && !odd ? e[i * rsa + csa].x : 0;
        dst[i] = l | h << 16;
      }
    }
  }
}

// Rows k0 .. k0 + kc - 1 and columns j0 .. j0 + nc - 1 of B (row k: pieces
// runs of width elements through rows()), in strips of NR columns: per pair
// p, dst[2 * NR * p + 2 * j + h] is element (2p + h, j) of the strip (zeros
// past nc and kc), columns 0-15 in the first zmm, 16-31 in the second.
POOLOPS_TARGET_BF16 void pack_b(int64_t kc, int64_t nc, int64_t k0, int64_t j0, int64_t width, int64_t pieces,
                                const GatheredRowsBf16& rows, uint16_t* dst) {
  const std::unique_ptr<const c10::BFloat16*[]> table(new const c10::BFloat16*[kc * pieces]);
  rows(k0, kc, table.get());
  const int64_t pairs = (kc + 1) / 2;
  const __m512i lo_index = interleave_index(0), hi_index = interleave_index(16);
  PieceRun runs[NR];
  for (int64_t s = 0; s < nc; s += NR, dst += 2 * NR * pairs) {
    const int64_t n = std::min(NR, nc - s);
    const int64_t nruns = piece_runs(j0 + s, n, width, runs);
    for (int64_t p = 0; p < pairs; ++p) {
      uint16_t* d = dst + 2 * NR * p;
      const c10::BFloat16* const* r0 = table.get() + 2 * p * pieces;
      const c10::BFloat16* const* r1 = 2 * p + 1 < kc ? r0 + pieces : nullptr;
      if (nruns == 1 && n == NR) {
        const int64_t q = runs[0].piece, o = runs[0].offset;
        const __m512i a = r0[q] != nullptr ? _mm512_loadu_si512(r0[q] + o) : _mm512_setzero_si512();
        const __m512i b = r1 != nullptr && r1[q] != nullptr ? _mm512_loadu_si512(r1[q] + o) : _mm512_setzero_si512();
        _mm512_storeu_si512(d, _mm512_permutex2var_epi16(a, lo_index, b));
        _mm512_storeu_si512(d + NR, _mm512_permutex2var_epi16(a, hi_index, b));
        continue;
      }
      std::fill_n(d, 2 * NR, uint16_t(0));
      for (int64_t r = 0; r < nruns; ++r) {
        const PieceRun& u = runs[r];
        for (int64_t h = 0; h < 2; ++h) {
          const c10::BFloat16* src = h == 0 ? r0[u.piece] : r1 != nullptr ? r1[u.piece] : nullptr;
          if (src == nullptr) continue;
          for (int64_t c = 0; c < u.len; ++c) {
            const int64_t j = u.at + c;  // zmm j / 16, lane j % 16
            d[j / 16 * NR + j % 16 * 2 + h] = src[u.offset + c].x;
          }
        }
      }
    }
  }
}

// c (MR x NR, row stride ldc) = a-strip * b-strip over `pairs` pairs of k (+ c when acc).
POOLOPS_TARGET_BF16 void micro_kernel(int64_t pairs, const uint32_t* a, const uint16_t* b, float* c, int64_t ldc,
                                      bool acc) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16  // registers, not a rep stos to memory
  for (int64_t i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p, a += MR, b += 2 * NR) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + NR);
#pragma GCC unroll 14
    for (int64_t i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(a[i]));
      c0[i] = _mm512_dpbf16_ps(c0[i], ai, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], ai, b1);
    }
  }
  store_tile(c0, c1, c, ldc, acc);
}

// One MC block of rows of C against a packed B panel of nc columns.
void block(int64_t mc, int64_t nc, int64_t pairs, const uint32_t* pa, const uint16_t* pb, float* C, int64_t ldc,
           bool acc) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    for (int64_t ir = 0; ir < mc; ir += MR) {
      run_tile(std::min(MR, mc - ir), std::min(NR, nc - jr), C + ir * ldc + jr, ldc, acc,
               [&](float* c, int64_t ld, bool add) {
                 micro_kernel(pairs, pa + ir * pairs, pb + jr * 2 * pairs, c, ld, add);
               });
    }
  }
}

}  // namespace

void gemm_bf16_gathered_b(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t rsa, int64_t csa,
                          int64_t width, const GatheredRowsBf16& rows, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    return;
  }
  const int64_t pieces = (N + width - 1) / width;
  const int64_t strips = (N + NR - 1) / NR;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t splits = std::max<int64_t>(1, std::min(strips, threads));
  const int64_t span = (strips + splits - 1) / splits * NR;
  at::parallel_for(0, splits, 1, [&](int64_t begin, int64_t end) {
    const std::unique_ptr<uint32_t[]> pa(new uint32_t[MC * KC / 2]);
    const std::unique_ptr<uint16_t[]> pb(new uint16_t[KC * std::min(NC, span)]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j1 = std::min(N, (t + 1) * span);
      for (int64_t jc = t * span; jc < j1; jc += NC) {
        const int64_t nc = std::min(NC, j1 - jc);
        for (int64_t pc = 0; pc < K; pc += KC) {
          const int64_t kc = std::min(KC, K - pc), pairs = (kc + 1) / 2;
          pack_b(kc, nc, pc, jc, width, pieces, rows, pb.get());
          for (int64_t ic = 0; ic < M; ic += MC) {
            const int64_t mc = std::min(MC, M - ic);
            pack_a(mc, kc, A + ic * rsa + pc * csa, rsa, csa, pa.get());
            block(mc, nc, pairs, pa.get(), pb.get(), C + ic * ldc + jc, ldc, pc > 0);
          }
        }
      }
    }
  });
}
#else
void gemm_bf16_gathered_b(int64_t, int64_t, int64_t, const c10::BFloat16*, int64_t, int64_t, int64_t,
                          const GatheredRowsBf16&, float*, int64_t) {}
#endif

}  // namespace poolops
