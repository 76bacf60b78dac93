// One AVX2 register of lanes for the CPU pooling loops, written with GCC/Clang
// vector extensions (intrinsics only where GCC's own code is slow or inexact
// or has no form: half conversion, widening, the bfloat16 stride-2 shuffle,
// FMA, index narrowing, non-temporal stores): eight floats for the NCHW row
// sweeps (loads widen half and bfloat16 exactly and de-interleave stride-2
// inputs; stores round as c10's conversions do), sixteen bfloat16 bit patterns
// where no arithmetic is needed (the taps backward). The compiler's own
// vectoriser handles neither reliably (measured 2-9x slower).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace poolops {
namespace vec8 {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef uint8_t u8x32 __attribute__((vector_size(32)));
typedef int64_t i64x8 __attribute__((vector_size(64)));

// The element types with an eight-float path.
template <typename T>
constexpr bool kSupported =
    std::is_same_v<T, float> || std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

template <typename V, typename T>
inline V load_raw(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// The bits of r as a V of the same size (vector types, intrinsic registers).
template <typename V, typename R>
inline V bit_cast(const R& r) {
  static_assert(sizeof(V) == sizeof(R));
  V v;
  std::memcpy(&v, &r, sizeof(v));
  return v;
}

inline f32x8 bits_to_f32(u32x8 u) { return bit_cast<f32x8>(u); }

inline f32x8 broadcast(float v) { return f32x8{} + v; }
inline i32x8 broadcast(int32_t v) { return i32x8{} + v; }
inline i32x8 iota() { return i32x8{0, 1, 2, 3, 4, 5, 6, 7}; }

// a * b + c rounded once, written out: -O1 builds contract no a * b + c.
inline f32x8 fmadd(f32x8 a, f32x8 b, f32x8 c) {
#if defined(__FMA__)
  return (f32x8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  for (int i = 0; i < 8; ++i) c[i] = std::fma(a[i], b[i], c[i]);
  return c;
#endif
}

inline f32x8 from_half(u16x8 h) {
#if defined(__F16C__)
  return bit_cast<f32x8>(_mm256_cvtph_ps(bit_cast<__m128i>(h)));
#else
  f32x8 v;
  for (int i = 0; i < 8; ++i) v[i] = static_cast<float>(c10::Half(h[i], c10::Half::from_bits()));
  return v;
#endif
}

// The 16-bit elements p[0], p[2], ..., p[14], zero-extended. Reads p[0..14]
// and no further (two loads, the second from p + 7, whose even elements
// are its high halves): a row's last element may end the tensor.
inline u32x8 even_u16(const void* p) {
  const u32x4 lo = load_raw<u32x4>(static_cast<const uint16_t*>(p)) & 0xFFFF;
  const u32x4 hi = load_raw<u32x4>(static_cast<const uint16_t*>(p) + 7) >> 16;
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

// Elements p[0], p[step], ..., p[7 * step] as floats; kStep > 0 fixes step.
// Reads no element past p[7 * step].
template <int kStep, typename T>
inline f32x8 load(const T* p, int64_t step) {
  if constexpr (kStep == 1 && std::is_same_v<T, float>) {
    return load_raw<f32x8>(p);
  } else if constexpr (kStep == 2 && std::is_same_v<T, float>) {
    return __builtin_shufflevector(load_raw<f32x8>(p), load_raw<f32x8>(p + 7), 0, 2, 4, 6, 9, 11, 13, 15);
  } else if constexpr (kStep == 1 && std::is_same_v<T, c10::BFloat16>) {
#if defined(__AVX2__)
    // One vpmovzxwd from memory (GCC widens the vector type in six instructions).
    return bit_cast<f32x8>(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
#else
    return bits_to_f32(__builtin_convertvector(load_raw<u16x8>(p), u32x8) << 16);
#endif
  } else if constexpr (kStep == 2 && std::is_same_v<T, c10::BFloat16>) {
#if defined(__AVX2__)
    // p[0..7] and p[7..14] in the two lanes; one byte shuffle moves each even
    // element to the high half of its float (low lane: low halves, high lane:
    // high halves of the dwords) and zeroes the rest.
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 7));
    const __m256i ctrl = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13,  //
                                          -1, -1, 2, 3, -1, -1, 6, 7, -1, -1, 10, 11, -1, -1, 14, 15);
    return bit_cast<f32x8>(_mm256_shuffle_epi8(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1), ctrl));
#else
    return bits_to_f32(even_u16(p) << 16);
#endif
  } else if constexpr (kStep == 1 && std::is_same_v<T, c10::Half>) {
    return from_half(load_raw<u16x8>(p));
  } else if constexpr (kStep == 2 && std::is_same_v<T, c10::Half>) {
    return from_half(__builtin_convertvector(even_u16(p), u16x8));
  } else {
    const int64_t s = kStep > 0 ? kStep : step;
    f32x8 v;
    for (int i = 0; i < 8; ++i) v[i] = static_cast<float>(p[i * s]);
    return v;
  }
}

// Two adjacent taps of a stride-2 row: p[0], p[2], ..., p[14] and p[1], p[3],
// ..., p[15], reading p[0..15]. bfloat16 pairs are the two halves of each
// dword of one load; float pairs two loads and two shuffles.
template <typename T>
inline void load2_pair(const T* p, f32x8& even, f32x8& odd) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const u32x8 u = load_raw<u32x8>(p);
    even = bits_to_f32(u << 16);
    odd = bits_to_f32(u & 0xFFFF0000u);
  } else if constexpr (std::is_same_v<T, float>) {
    const f32x8 a = load_raw<f32x8>(p), b = load_raw<f32x8>(p + 8);
    even = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
    odd = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {
    even = load<2>(p, 2);
    odd = load<2>(p + 1, 2);
  }
}

// load<2>(p) for a tap whose p[-1] may be read (the previous tap's first
// element): bfloat16 takes the high halves of one load from p - 1.
template <typename T>
inline f32x8 load2_after(const T* p) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return bits_to_f32(load_raw<u32x8>(p - 1) & 0xFFFF0000u);
  } else {
    return load<2>(p, 2);
  }
}

// Stride-2 taps in "pair order" for the NCHW max and avg row blocks
// (for_each_tap_blocks8): a float block's eight outputs lie in lanes
// 0 1 4 5 2 3 6 7, one in-lane vshufps a tap where load2_pair's natural order
// takes lane-crossing permutes; from_pair_order puts them back. Other types
// keep the natural order.
template <typename T>
inline void pair_taps(const T* p, f32x8& even, f32x8& odd) {
  if constexpr (std::is_same_v<T, float>) {
    const f32x8 a = load_raw<f32x8>(p), b = load_raw<f32x8>(p + 8);
    even = __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14);
    odd = __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  } else {
    load2_pair(p, even, odd);
  }
}

// One tap p[0], p[2], ..., p[14] in pair order, reading p[-1..14].
template <typename T>
inline f32x8 pair_tap(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    const f32x8 a = load_raw<f32x8>(p), b = load_raw<f32x8>(p + 7);
    return __builtin_shufflevector(a, b, 0, 2, 9, 11, 4, 6, 13, 15);
  } else {
    return load2_after(p);
  }
}

template <typename T>
inline f32x8 from_pair_order(f32x8 v) {
  if constexpr (std::is_same_v<T, float>) return __builtin_shufflevector(v, v, 0, 1, 4, 5, 2, 3, 6, 7);
  return v;
}

inline bool any_nan(f32x8 v) {
#if defined(__AVX2__)
  return _mm256_movemask_ps(_mm256_cmp_ps(bit_cast<__m256>(v), bit_cast<__m256>(v), _CMP_UNORD_Q)) != 0;
#else
  for (int i = 0; i < 8; ++i) {
    if (v[i] != v[i]) return true;
  }
  return false;
#endif
}

// Sixteen bfloat16 gradients g as static_cast<BFloat16>(0.0f + float(g)), on
// the bits: -0 becomes +0 and a NaN c10's quiet NaN; other values pass.
inline u16x16 bf16_plus_zero(u16x16 b) {
  const u16x16 r = (b == 0x8000) ? u16x16{} : b;
  return ((b & 0x7FFF) > 0x7F80) ? u16x16{} + 0x7FC0 : r;
}
// Eight bytes p[0..7], zero-extended (the compiler's own conversion goes through scalar registers).
inline i32x8 widen8(const uint8_t* p) {
#if defined(__AVX2__)
  return bit_cast<i32x8>(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  return __builtin_convertvector(load_raw<u8x8>(p), i32x8);
#endif
}
inline u16x16 widen16(const uint8_t* p) {
#if defined(__AVX2__)
  return bit_cast<u16x16>(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  return __builtin_convertvector(load_raw<u8x16>(p), u16x16);
#endif
}
inline u16x16 widen16_pairs(const uint8_t* p) {
  const u16x8 v = __builtin_convertvector(load_raw<u8x8>(p), u16x8);
  return __builtin_shufflevector(v, v, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
}
inline u16x16 load16_pairs(const void* p) {
  const u16x8 v = load_raw<u16x8>(p);
  return __builtin_shufflevector(v, v, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
}

// Transposes eight rows of eight floats in place: r[i][j] becomes r[j][i].
inline void transpose8(f32x8 (&r)[8]) {
  f32x8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[i + 4] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Eight floats rounded to bfloat16 as static_cast<c10::BFloat16>(float)
// does (to nearest even, NaN to c10's quiet NaN): the bits in each high half.
inline u32x8 bf16_high_halves(f32x8 v) {
  const u32x8 u = bit_cast<u32x8>(v);
  return (v != v) ? u32x8{} + 0x7FC00000u : (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
}

// Eight floats as T's bits (f32x8 or u16x8), rounding to nearest even (NaN to
// c10's quiet NaN for bfloat16), as static_cast<T>(float) does.
template <typename T>
inline auto narrow(f32x8 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return __builtin_convertvector(bf16_high_halves(v) >> 16, u16x8);
  } else {
    static_assert(std::is_same_v<T, c10::Half>);
#if defined(__F16C__)
    return bit_cast<u16x8>(_mm256_cvtps_ph(bit_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT));  // c10's own under F16C
#else
    u16x8 h;
    for (int i = 0; i < 8; ++i) h[i] = static_cast<T>(v[i]).x;
    return h;
#endif
  }
}

// Sixteen bfloat16 at p from the even and odd elements load2_pair gave,
// each rounded as narrow() rounds; `stream` (p 32-byte aligned) stores
// them non-temporally.
inline void store_pair(c10::BFloat16* p, f32x8 even, f32x8 odd, bool stream = false) {
  const u32x8 bits = (bf16_high_halves(even) >> 16) | bf16_high_halves(odd);
#if defined(__AVX2__)
  if (stream) return _mm256_stream_si256(reinterpret_cast<__m256i*>(p), bit_cast<__m256i>(bits));
#endif
  std::memcpy(p, &bits, sizeof(bits));
}

template <typename T>
inline void store(T* p, f32x8 v) {
  if constexpr (kSupported<T>) {
    const auto bits = narrow<T>(v);
    std::memcpy(p, &bits, sizeof(bits));
  } else {
    for (int i = 0; i < 8; ++i) p[i] = static_cast<T>(v[i]);
  }
}

// store() with a non-temporal store (p aligned to the stored bytes): the
// line is written without first being read. stream_fence() orders these
// stores before a task ends.
template <typename T>
inline void store_stream(T* p, f32x8 v) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_stream_ps(p, bit_cast<__m256>(v));
  } else if constexpr (kSupported<T>) {
    return _mm_stream_si128(reinterpret_cast<__m128i*>(p), bit_cast<__m128i>(narrow<T>(v)));
  }
#endif
  store(p, v);
}

inline void stream_fence() {
#if defined(__AVX2__)
  _mm_sfence();
#endif
}

// dst[i] = static_cast<T>(src[i]) for i < n, eight at a time from float;
// `stream` (dst aligned to eight elements) with store_stream.
template <typename S, typename T>
inline void narrow_copy(const S* src, T* dst, int64_t n, bool stream = false) {
  int64_t i = 0;
  if constexpr (std::is_same_v<S, float> && kSupported<T>) {
    if (stream) {
      for (; i + 8 <= n; i += 8) store_stream(dst + i, load<1>(src + i, 1));
    }
    for (; i + 8 <= n; i += 8) store(dst + i, load<1>(src + i, 1));
  }
  for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// v / d lane by lane, or v * (1 / d) where that is the same quotient (ExactDiv's rule).
template <typename Div>
inline f32x8 divide(f32x8 v, const Div& d) {
  return d.by_mul ? v * d.inv : v / d.d;
}

// Eight argmaxes stored as T (static_cast's value, lane by lane): one
// conversion and store for int64 indices and one-byte taps.
template <typename T>
inline void store_index(T* p, i32x8 v) {
  if constexpr (std::is_same_v<T, int64_t>) {
#if defined(__AVX2__)
    // Two vpmovsxdq (GCC's 64-byte vector went through the stack: 5.9 -> 7.1 ms on the stem with indices).
    const __m256i w = bit_cast<__m256i>(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(w)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(w, 1)));
#else
    const i64x8 wide = __builtin_convertvector(v, i64x8);
    std::memcpy(p, &wide, sizeof(wide));
#endif
  } else if constexpr (std::is_same_v<T, uint8_t>) {
#if defined(__AVX2__)
    // The low byte of each dword to the low dword of its 128-bit lane, then the
    // two lanes' dwords side by side (GCC's own conversion went through scalars).
    const __m256i ctrl = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i b = _mm256_shuffle_epi8(bit_cast<__m256i>(v), ctrl);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                     _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
#else
    const u8x8 narrow = __builtin_convertvector(v, u8x8);
    std::memcpy(p, &narrow, sizeof(narrow));
#endif
  } else {
    for (int i = 0; i < 8; ++i) p[i] = static_cast<T>(v[i]);
  }
}

// The max-pool update of max_pool_takes, lane by lane.
inline i32x8 takes(f32x8 v, f32x8 best) { return (v > best) | (v != v); }

// (best, arg) becomes the result of one row-major scan over the taps of two
// scans, each over its own taps in increasing index order: the last NaN, else
// the first of the largest values.
inline void merge_max(f32x8& best, i32x8& arg, f32x8 other, i32x8 other_arg) {
  const i32x8 nan = best != best, other_nan = other != other;
  const i32x8 take = (other_nan & (~nan | (other_arg > arg))) | (other > best) |
                     ((other == best) & (other_arg < arg));
  best = take ? other : best;
  arg = take ? other_arg : arg;
}

}  // namespace vec8
}  // namespace poolops
