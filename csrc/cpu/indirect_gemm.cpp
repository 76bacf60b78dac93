// Register tiles of kIndirectRows rows x 64 columns (24 zmm accumulators).
// B is packed in 64-column panels, tap after tap, k after k; bfloat16 packs
// k in pairs (the two values of one column side by side), the operand layout
// of vdpbf16ps, and broadcasts a pair of A's elements at a time. Threads take
// groups of whole row tiles.
#include "indirect_gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstring>

#include "gemm.h"
#include "vec16.h"

namespace poolops {
namespace {

constexpr int64_t MR = kIndirectRows, NQ = 4, NR = 16 * NQ;

// Elements of k packed side by side: 2 for bfloat16's pairs.
template <typename T>
constexpr int64_t kPair = sizeof(T) == 2 ? 2 : 1;

#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

template <typename T>
__attribute__((target("avx512f"))) inline void store_tile(__m512 (&acc)[MR][NQ], T* const* c, int64_t nc) {
#pragma GCC unroll 6
  for (int64_t r = 0; r < MR; ++r) {
    if (c[r] == nullptr) continue;
    if (nc == NR) {
      for (int64_t q = 0; q < NQ; ++q) vec16::store(c[r] + 16 * q, acc[r][q]);
      continue;
    }
    alignas(64) float row[NR];
    for (int64_t q = 0; q < NQ; ++q) _mm512_store_ps(row + 16 * q, acc[r][q]);
    for (int64_t n = 0; n < nc; ++n) c[r][n] = static_cast<T>(row[n]);
  }
}

__attribute__((target("avx512f"))) void tile_f32(int64_t taps, int64_t K, const float* const* a, const float* b,
                                                 const float* bias, float* const* c, int64_t nc) {
  __m512 acc[MR][NQ];
  for (int64_t q = 0; q < NQ; ++q) {
    const __m512 init = _mm512_loadu_ps(bias + 16 * q);
    for (int64_t r = 0; r < MR; ++r) acc[r][q] = init;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float* ar[MR];
    for (int64_t r = 0; r < MR; ++r) ar[r] = a[r * taps + t];
    for (int64_t k = 0; k < K; ++k, b += NR) {
      __m512 bq[NQ];
      for (int64_t q = 0; q < NQ; ++q) bq[q] = _mm512_loadu_ps(b + 16 * q);
#pragma GCC unroll 6
      for (int64_t r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(ar[r][k]);
        for (int64_t q = 0; q < NQ; ++q) acc[r][q] = _mm512_fmadd_ps(av, bq[q], acc[r][q]);
      }
    }
  }
  store_tile(acc, c, nc);
}

// acc += A's elements k, k + 1 of each row (only k when kLast) times one
// packed pair row of B.
template <bool kLast>
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void pair_step(
    __m512 (&acc)[MR][NQ], const c10::BFloat16* b, const c10::BFloat16* const (&ar)[MR], int64_t k) {
  __m512bh bq[NQ];
  for (int64_t q = 0; q < NQ; ++q) bq[q] = (__m512bh)_mm512_loadu_si512(b + 32 * q);
#pragma GCC unroll 6
  for (int64_t r = 0; r < MR; ++r) {
    int32_t pair = 0;
    std::memcpy(&pair, ar[r] + k, kLast ? 2 : 4);
    const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
    for (int64_t q = 0; q < NQ; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], av, bq[q]);
  }
}

__attribute__((target("avx512f,avx512bf16"))) void tile_bf16(int64_t taps, int64_t K, const c10::BFloat16* const* a,
                                                              const c10::BFloat16* b, const float* bias,
                                                              c10::BFloat16* const* c, int64_t nc) {
  __m512 acc[MR][NQ];
  for (int64_t q = 0; q < NQ; ++q) {
    const __m512 init = _mm512_loadu_ps(bias + 16 * q);
    for (int64_t r = 0; r < MR; ++r) acc[r][q] = init;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const c10::BFloat16* ar[MR];
    for (int64_t r = 0; r < MR; ++r) ar[r] = a[r * taps + t];
    int64_t k = 0;
    for (; k + 1 < K; k += 2, b += 2 * NR) pair_step<false>(acc, b, ar, k);
    if (k < K) {  // odd K: A's last element beside a zero, against B's zero padding
      pair_step<true>(acc, b, ar, k);
      b += 2 * NR;
    }
  }
  store_tile(acc, c, nc);
}

#pragma GCC diagnostic pop
#endif

template <typename T>
void tile(int64_t taps, int64_t K, const T* const* a, const T* b, const float* bias, T* const* c, int64_t nc) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    tile_f32(taps, K, a, b, bias, c, nc);
  } else {
    tile_bf16(taps, K, a, b, bias, c, nc);
  }
#endif
}

}  // namespace

bool indirect_gemm_supported(at::ScalarType type, int64_t K) {
  if (!own_gemm_enabled() || K <= 0) return false;
  if (type == at::kFloat) return true;
  return type == at::kBFloat16 && avx512_bf16_enabled();
}

template <typename T>
std::vector<T> pack_indirect_b(const std::vector<const T*>& tap_base, int64_t K, int64_t N, int64_t sk, int64_t sn) {
  constexpr int64_t P = kPair<T>;
  const int64_t taps = static_cast<int64_t>(tap_base.size());
  const int64_t panels = (N + NR - 1) / NR, Kp = (K + P - 1) / P * P;
  std::vector<T> out(panels * taps * Kp * NR, T(0));
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t t = 0; t < taps; ++t) {
      T* dst = out.data() + (p * taps + t) * Kp * NR;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = 0; j < NR && p * NR + j < N; ++j) {
          dst[(k - k % P) * NR + j * P + k % P] = tap_base[t][k * sk + (p * NR + j) * sn];
        }
      }
    }
  }
  return out;
}

template <typename T>
void indirect_gemm(int64_t M, int64_t N, int64_t taps, int64_t K, const T* packed_b, const float* bias,
                   c10::function_ref<void(int64_t m0, int64_t mr, const T** a, T** c)> rows) {
  const int64_t panels = (N + NR - 1) / NR, Kp = (K + kPair<T> - 1) / kPair<T> * kPair<T>;
  std::vector<float> bias_padded(panels * NR, 0.f);
  if (bias != nullptr) std::copy(bias, bias + N, bias_padded.begin());
  // Tasks are groups of kGroup row tiles, which take each column panel in
  // turn, so that the group reuses the panel's B before the next is read
  // (ResNet's 3x3 stride-2 channels-last forward: float32 10.4 -> 9.9 ms,
  // bfloat16 4.56 -> 4.25; one tile after another went through all of B).
  constexpr int64_t kGroup = 4;
  const int64_t tiles = (M + MR - 1) / MR;
  at::parallel_for(0, (tiles + kGroup - 1) / kGroup, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> a(kGroup * MR * taps);
    T* c[kGroup][MR];
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t t0 = grp * kGroup, nt = std::min(kGroup, tiles - t0);
      for (int64_t u = 0; u < nt; ++u) {
        const int64_t m0 = (t0 + u) * MR, mr = std::min(MR, M - m0);
        const T** au = a.data() + u * MR * taps;
        rows(m0, mr, au, c[u]);
        for (int64_t r = mr; r < MR; ++r) {  // a short last tile repeats its last row and stores nothing for it
          std::copy(au + (mr - 1) * taps, au + mr * taps, au + r * taps);
          c[u][r] = nullptr;
        }
      }
      for (int64_t p = 0; p < panels; ++p) {
        for (int64_t u = 0; u < nt; ++u) {
          T* cp[MR];
          for (int64_t r = 0; r < MR; ++r) cp[r] = c[u][r] ? c[u][r] + p * NR : nullptr;
          tile<T>(taps, K, a.data() + u * MR * taps, packed_b + p * taps * Kp * NR, bias_padded.data() + p * NR,
                  cp, std::min(NR, N - p * NR));
        }
      }
    }
  });
}

template std::vector<float> pack_indirect_b(const std::vector<const float*>&, int64_t, int64_t, int64_t, int64_t);
template std::vector<c10::BFloat16> pack_indirect_b(const std::vector<const c10::BFloat16*>&, int64_t, int64_t,
                                                    int64_t, int64_t);
template void indirect_gemm(int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                            c10::function_ref<void(int64_t, int64_t, const float**, float**)>);
template void indirect_gemm(int64_t, int64_t, int64_t, int64_t, const c10::BFloat16*, const float*,
                            c10::function_ref<void(int64_t, int64_t, const c10::BFloat16**, c10::BFloat16**)>);

}  // namespace poolops
