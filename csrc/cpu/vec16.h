// Sixteen floats in an AVX-512 register, for functions built with
// __attribute__((target("avx512f"))) and called only when avx512_enabled():
// the library itself is built for AVX2 (see vec8.h).
#pragma once

#if defined(__x86_64__)
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "vec8.h"

namespace poolops {
namespace vec16 {

// GCC 12's AVX-512 conversion intrinsics start from an undefined register and warn about it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// p[0..15] as floats (exact for half and bfloat16).
template <typename T>
__attribute__((target("avx512f"))) inline __m512 load(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    static_assert(std::is_same_v<T, c10::Half>);
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

// Elements p[0], p[step], ..., p[15 * step] as floats; kStep > 0 fixes step.
// kStep 2 reads p[0..30] and no further (a row's last element may end the tensor).
template <int kStep, typename T>
__attribute__((target("avx512f"))) inline __m512 load(const T* p, int64_t step) {
  if constexpr (kStep == 1) {
    return load(p);
  } else if constexpr (kStep == 2) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_permutex2var_ps(load(p), even, load(p + 15));
  } else {
    const int64_t s = kStep > 0 ? kStep : step;
    alignas(64) float v[16];
    for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(p[i * s]);
    return _mm512_load_ps(v);
  }
}

// Two adjacent taps of a stride-2 row: p[0], p[2], ..., p[30] and p[1], p[3],
// ..., p[31], reading p[0..31] (bfloat16: the two halves of each dword of one load).
template <typename T>
__attribute__((target("avx512f"))) inline void load2_pair(const T* p, __m512& even, __m512& odd) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m512i u = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(int32_t(0xFFFF0000u))));
  } else if constexpr (std::is_same_v<T, float>) {
    const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    const __m512i lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    even = _mm512_permutex2var_ps(a, lanes, b);
    odd = _mm512_permutex2var_ps(a, _mm512_add_epi32(lanes, _mm512_set1_epi32(1)), b);
  } else {
    even = load<2>(p, 2);
    odd = load<2>(p + 1, 2);
  }
}

// load<2>(p) for a tap whose p[-1] may be read (the previous tap's first
// element): bfloat16 takes the high halves of one load from p - 1.
template <typename T>
__attribute__((target("avx512f"))) inline __m512 load2_after(const T* p) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(p - 1), _mm512_set1_epi32(int32_t(0xFFFF0000u))));
  } else {
    return load<2>(p, 2);
  }
}

// v rounded to bfloat16 as vec8::narrow rounds (nearest even; NaN to c10's
// quiet NaN), in the low half of each lane.
__attribute__((target("avx512f"))) inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
}

// p[0..15] = v as T, rounding as vec8::narrow (nearest even; NaN to c10's
// quiet NaN for bfloat16); `stream` as vec8::store_stream (p aligned to the
// bytes stored).
template <typename T>
__attribute__((target("avx512f"))) inline void store(T* p, __m512 v, bool stream = false) {
  if constexpr (std::is_same_v<T, float>) {
    stream ? _mm512_stream_ps(p, v) : _mm512_storeu_ps(p, v);
    return;
  }
  __m256i bits;
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    bits = _mm512_cvtepi32_epi16(bf16_bits(v));
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    bits = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  }
  __m256i* dst = reinterpret_cast<__m256i*>(p);
  stream ? _mm256_stream_si256(dst, bits) : _mm256_storeu_si256(dst, bits);
}

// Thirty-two bfloat16 at p from the even and odd elements load2_pair gave,
// each rounded as store() rounds; `stream` as store's (p 64-byte aligned).
__attribute__((target("avx512f"))) inline void store_pair(c10::BFloat16* p, __m512 even, __m512 odd,
                                                          bool stream = false) {
  const __m512i bits = _mm512_or_si512(bf16_bits(even), _mm512_slli_epi32(bf16_bits(odd), 16));
  stream ? _mm512_stream_si512(reinterpret_cast<__m512i*>(p), bits) : _mm512_storeu_si512(p, bits);
}

// store(p, v) for v that T holds exactly and that has no NaN (a max of T
// values): bfloat16 takes the high halves, with no rounding to do.
template <typename T>
__attribute__((target("avx512f"))) inline void store_exact(T* p, __m512 v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m256i bits = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
  } else {
    store(p, v);
  }
}

// v > best ? v : best, lane by lane (one vmaxps: a NaN in v keeps best).
__attribute__((target("avx512f"))) inline __m512 max_over(__m512 v, __m512 best) { return _mm512_max_ps(v, best); }

// Sixteen argmaxes (int32 lanes) stored as T: int64 indices or one-byte taps.
template <typename T>
__attribute__((target("avx512f"))) inline void store_index(T* p, __m512i v) {
  if constexpr (std::is_same_v<T, int64_t>) {
    _mm512_storeu_si512(p, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
    _mm512_storeu_si512(p + 8, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
  } else {
    static_assert(std::is_same_v<T, uint8_t>);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
  }
}

// fn (taking and giving vec8::f32x8) applied to each eight-float half of v.
template <typename Fn>
__attribute__((target("avx512f"))) inline __m512 each_half(__m512 v, const Fn& fn) {
  const auto half = [&](__m256 h) { return vec8::bit_cast<__m256d>(fn(vec8::bit_cast<vec8::f32x8>(h))); };
  const __m256d lo = half(_mm512_castps512_ps256(v));
  const __m256d hi = half(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(lo), hi, 1));
}

#pragma GCC diagnostic pop

}  // namespace vec16
}  // namespace poolops
#endif
