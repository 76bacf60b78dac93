// Goto-style blocking: B is packed in KC x NC panels of NR-wide strips, A in
// MC x KC blocks of MR-tall strips (zero-padded), and a 14 x 32 register tile
// of 28 zmm accumulators runs over each strip pair. Threads split the MC
// blocks of a panel or, when the blocks are fewer than the threads, the
// columns of C, each packing its own strips of B; each element of C is
// summed by one thread, in the same order either way.
#include "gemm.h"

#include "gemm_tile.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define POOLOPS_GEMM_X86 1
#endif

namespace poolops {
namespace {

constexpr int64_t MR = kTileRows, NR = kTileCols, KC = 256, MC = MR * 12, NC = 1024;

// One strip of a panel: dst[k * width + i] = src[i * is + k * ks] for i < n
// (zeros for n <= i < width) and k < kc. A strips are MR rows of A, B strips
// NR columns of B.
void pack_strip(const float* src, int64_t n, int64_t width, int64_t kc, int64_t is, int64_t ks, float* dst) {
  if (ks == 1) {  // each line contiguous along k: read it once
    for (int64_t i = 0; i < width; ++i) {
      if (i >= n) {
        for (int64_t k = 0; k < kc; ++k) dst[k * width + i] = 0.f;
        continue;
      }
      const float* line = src + i * is;
      for (int64_t k = 0; k < kc; ++k) dst[k * width + i] = line[k];
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k) {
    if (is == 1 && n == MR && width == MR) {  // a constant size: inline moves, not a memcpy call
      std::memcpy(dst + k * MR, src + k * ks, MR * sizeof(float));
      continue;
    }
    if (is == 1 && n == width) {
      std::memcpy(dst + k * width, src + k * ks, width * sizeof(float));
      continue;
    }
    for (int64_t i = 0; i < n; ++i) dst[k * width + i] = src[i * is + k * ks];
    for (int64_t i = n; i < width; ++i) dst[k * width + i] = 0.f;
  }
}

void pack_a(int64_t mc, int64_t kc, const float* A, int64_t rsa, int64_t csa, float* dst) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    pack_strip(A + i0 * rsa, std::min(MR, mc - i0), MR, kc, rsa, csa, dst);
  }
}

void pack_b(int64_t kc, int64_t nc, const float* B, int64_t rsb, int64_t csb, float* dst) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
    pack_strip(B + j0 * csb, std::min(NR, nc - j0), NR, kc, csb, rsb, dst);
  }
}

// pack_b for B given as row pieces (gemm_f32_gathered_b): rows k0 .. k0 + kc
// - 1, columns j0 .. j0 + nc - 1.
void pack_b_gathered(int64_t kc, int64_t nc, int64_t k0, int64_t j0, int64_t width, int64_t pieces,
                     const GatheredRows& rows, float* dst) {
  const std::unique_ptr<const float*[]> table(new const float*[kc * pieces]);
  rows(k0, kc, table.get());
  PieceRun runs[NR];
  for (int64_t s = 0; s < nc; s += NR, dst += NR * kc) {
    const int64_t n = std::min(NR, nc - s);
    const int64_t nruns = piece_runs(j0 + s, n, width, runs);
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * NR;
      const float* const* row = table.get() + k * pieces;
      if (nruns == 1 && n == NR && row[runs[0].piece] != nullptr) {  // inline moves, as in pack_strip
        std::memcpy(d, row[runs[0].piece] + runs[0].offset, NR * sizeof(float));
        continue;
      }
      for (int64_t r = 0; r < nruns; ++r) {
        const PieceRun& u = runs[r];
        if (row[u.piece] != nullptr) {
          std::memcpy(d + u.at, row[u.piece] + u.offset, u.len * sizeof(float));
        } else {
          std::fill_n(d + u.at, u.len, 0.f);
        }
      }
      std::fill(d + n, d + NR, 0.f);
    }
  }
}

#ifdef POOLOPS_GEMM_X86
// c (MR x NR, row stride ldc) = a-strip * b-strip (+ c when acc). The a-strip
// is packed (element (i, k) at a[k * MR + i]) or, when lda > 0, MR rows of A
// itself, each contiguous along k (element (i, k) at a[i * lda + k]).
__attribute__((target("avx512f"))) void micro_kernel(int64_t kc, const float* a, int64_t lda, const float* b,
                                                     float* c, int64_t ldc, bool acc) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16  // registers, not a rep stos to memory
  for (int64_t i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  const int64_t ik = lda > 0 ? lda : 1, kk = lda > 0 ? 1 : MR;
  for (int64_t k = 0; k < kc; ++k, a += kk, b += NR) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    for (int64_t i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i * ik]);
      c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
    }
  }
  store_tile(c0, c1, c, ldc, acc);
}
#else
void micro_kernel(int64_t, const float*, int64_t, const float*, float*, int64_t, bool) {}
#endif

// One MC block of C against a packed B panel of nc columns. A is packed in
// pa, or read in place at a (row stride lda) when lda > 0, its short last
// strip packed in pa.
void block(int64_t mc, int64_t nc, int64_t kc, const float* a, int64_t lda, float* pa, const float* pb, float* C,
           int64_t ldc, bool acc) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    for (int64_t ir = 0; ir < mc; ir += MR) {
      const int64_t mr = std::min(MR, mc - ir);
      const bool direct = lda > 0 && mr == MR;
      const float* as = direct ? a + ir * lda : pa + ir * kc;
      if (lda > 0 && !direct && jr == 0) pack_strip(a + ir * lda, mr, MR, kc, lda, 1, pa + ir * kc);
      run_tile(mr, std::min(NR, nc - jr), C + ir * ldc + jr, ldc, acc, [&](float* c, int64_t ld, bool add) {
        micro_kernel(kc, as, direct ? lda : 0, pb + jr * kc, c, ld, add);
      });
    }
  }
}

}  // namespace

bool avx512_enabled() {
#ifdef POOLOPS_GEMM_X86
  static const bool enabled = [] {
    const char* v = std::getenv("POOLOPS_AVX512");
    return __builtin_cpu_supports("avx512f") && !(v != nullptr && std::strcmp(v, "0") == 0);
  }();
  return enabled;
#else
  return false;
#endif
}

bool avx512_bf16_enabled() {
#ifdef POOLOPS_GEMM_X86
  static const bool yes = avx512_enabled() && __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

bool own_gemm_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("POOLOPS_GEMM");
    return avx512_enabled() && !(v != nullptr && std::strcmp(v, "0") == 0);
  }();
  return enabled;
}

namespace {

// gemm_f32 with pack(kc, nc, pc, jc, dst) packing rows pc .. pc + kc - 1 and
// columns jc .. jc + nc - 1 of B as pack_b does (called from several threads).
template <typename PackB>
void gemm_impl(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const PackB& pack, float* C,
               int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    }
    return;
  }
  const int64_t blocks = (M + MC - 1) / MC;
  const bool direct_a = csa == 1 && rsa > 0;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (blocks < threads) {
    // Fewer MC blocks than threads: the threads split the columns instead,
    // once for the whole product, each packing its own strips of B. (Packing
    // a shared B panel on one thread, with a fork and join per KC step, took
    // a third of the time of the weight gradient of ResNet's 3x3 stride-2
    // conv, whose K is 32 images' pixels.)
    const int64_t strips = (N + NR - 1) / NR;
    const int64_t splits = std::min(strips, (threads + blocks - 1) / blocks);
    const int64_t span = (strips + splits - 1) / splits * NR;
    at::parallel_for(0, blocks * splits, 1, [&](int64_t begin, int64_t end) {
      const std::unique_ptr<float[]> pa(new float[MC * KC]);
      const std::unique_ptr<float[]> pb(new float[KC * std::min(NC, span)]);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t ic = t / splits * MC, mc = std::min(MC, M - ic);
        const int64_t j0 = t % splits * span, j1 = std::min(N, j0 + span);
        for (int64_t jc = j0; jc < j1; jc += NC) {
          const int64_t nc = std::min(NC, j1 - jc);
          for (int64_t pc = 0; pc < K; pc += KC) {
            const int64_t kc = std::min(KC, K - pc);
            const bool acc = accumulate || pc > 0;
            pack(kc, nc, pc, jc, pb.get());
            const float* a = A + ic * rsa + pc * csa;
            float* c = C + ic * ldc + jc;
            if (direct_a) {
              block(mc, nc, kc, a, rsa, pa.get(), pb.get(), c, ldc, acc);
            } else {
              pack_a(mc, kc, a, rsa, csa, pa.get());
              block(mc, nc, kc, pa.get(), 0, pa.get(), pb.get(), c, ldc, acc);
            }
          }
        }
      }
    });
    return;
  }
  // Uninitialised scratch: packing writes every element it reads (a zeroing vector cost 3% of a conv).
  const std::unique_ptr<float[]> pb(new float[KC * ((std::min(NC, N) + NR - 1) / NR * NR)]);
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool acc = accumulate || pc > 0;
      pack(kc, nc, pc, jc, pb.get());
      // Tasks are MC blocks, sharing the packed panel of B.
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        const std::unique_ptr<float[]> pa(new float[MC * kc]);
        for (int64_t ib = begin; ib < end; ++ib) {
          const int64_t ic = ib * MC, mc = std::min(MC, M - ic);
          const float* a = A + ic * rsa + pc * csa;
          float* c = C + ic * ldc + jc;
          if (direct_a) {  // rows contiguous along k: broadcast from A itself
            block(mc, nc, kc, a, rsa, pa.get(), pb.get(), c, ldc, acc);
            continue;
          }
          pack_a(mc, kc, a, rsa, csa, pa.get());
          block(mc, nc, kc, pa.get(), 0, pa.get(), pb.get(), c, ldc, acc);
        }
      });
    }
  }
}

}  // namespace

void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B, int64_t rsb,
              int64_t csb, float* C, int64_t ldc, bool accumulate) {
  gemm_impl(M, N, K, A, rsa, csa, [&](int64_t kc, int64_t nc, int64_t pc, int64_t jc, float* dst) {
    pack_b(kc, nc, B + pc * rsb + jc * csb, rsb, csb, dst);
  }, C, ldc, accumulate);
}

void gemm_f32_gathered_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, int64_t width,
                         const GatheredRows& rows, float* C, int64_t ldc, bool accumulate) {
  const int64_t pieces = (N + width - 1) / width;
  gemm_impl(M, N, K, A, rsa, csa, [&](int64_t kc, int64_t nc, int64_t pc, int64_t jc, float* dst) {
    pack_b_gathered(kc, nc, pc, jc, width, pieces, rows, dst);
  }, C, ldc, accumulate);
}

}  // namespace poolops
