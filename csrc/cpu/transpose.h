// Per-image matrix transposes between NCHW and NHWC data on CPU, 8x8 blocks
// in AVX2 registers (torch's own layout copies, each into a freshly mapped
// buffer, ran at 5-25 GB/s on this project's machine).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace poolops {
namespace detail {

#if defined(__AVX2__)
// dst[j * ld_dst + i] = src[i * ld_src + j] for an 8x8 block of 4-byte elements.
inline void transpose8x8_4(const void* src, int64_t ld_src, void* dst, int64_t ld_dst) {
  const auto* s = static_cast<const float*>(src);
  auto* d = static_cast<float*>(dst);
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(d + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(d + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// The same for 2-byte elements, in 128-bit registers.
inline void transpose8x8_2(const void* src, int64_t ld_src, void* dst, int64_t ld_dst) {
  const auto* s = static_cast<const uint16_t*>(src);
  auto* d = static_cast<uint16_t*>(dst);
  __m128i r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * ld_src));
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm_unpacklo_epi16(r[i], r[i + 1]);
    t[i + 1] = _mm_unpackhi_epi16(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm_unpacklo_epi32(t[i], t[i + 2]);
    r[i + 1] = _mm_unpackhi_epi32(t[i], t[i + 2]);
    r[i + 2] = _mm_unpacklo_epi32(t[i + 1], t[i + 3]);
    r[i + 3] = _mm_unpackhi_epi32(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * i) * ld_dst), _mm_unpacklo_epi64(r[i], r[i + 4]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * i + 1) * ld_dst), _mm_unpackhi_epi64(r[i], r[i + 4]));
  }
}
#endif

}  // namespace detail

// dst[n][j][i] = src[n][i][j] for n < images, i < rows, j < cols: an image's
// (rows x cols) matrix transposed. NCHW -> NHWC is rows = C, cols = H * W.
// A task takes a 64 x 64 tile, so it writes whole lines of dst (no line
// shared between threads) and reads 64 source rows at a time.
template <typename T>
void transpose_images(const T* src, T* dst, int64_t images, int64_t rows, int64_t cols) {
  constexpr int64_t B = 8, kTile = 64;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  at::parallel_for(0, images * row_tiles * col_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (row_tiles * col_tiles), rt = task / col_tiles % row_tiles, ct = task % col_tiles;
      const T* s = src + n * rows * cols;
      T* d = dst + n * rows * cols;
      const int64_t i_begin = rt * kTile, i_end = std::min(rows, i_begin + kTile);
      const int64_t j_end = std::min(cols, ct * kTile + kTile);
      int64_t j0 = ct * kTile;
#if defined(__AVX2__)
      if constexpr (sizeof(T) == 4 || sizeof(T) == 2) {
        for (; j0 + B <= j_end; j0 += B) {
          int64_t i0 = i_begin;
          for (; i0 + B <= i_end; i0 += B) {
            if constexpr (sizeof(T) == 4) {
              detail::transpose8x8_4(s + i0 * cols + j0, cols, d + j0 * rows + i0, rows);
            } else {
              detail::transpose8x8_2(s + i0 * cols + j0, cols, d + j0 * rows + i0, rows);
            }
          }
          for (int64_t j = j0; j < j0 + B; ++j) {
            for (int64_t i = i0; i < i_end; ++i) d[j * rows + i] = s[i * cols + j];
          }
        }
      }
#endif
      for (int64_t j = j0; j < j_end; ++j) {
        for (int64_t i = i_begin; i < i_end; ++i) d[j * rows + i] = s[i * cols + j];
      }
    }
  });
}

}  // namespace poolops
