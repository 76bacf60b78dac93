// Parts shared by the two Goto-style GEMMs (gemm.cpp, gemm_bf16.cpp): the
// store of their 14 x 32 float register tile, its edge tiles, and the
// columns of a strip of B whose rows are gathered in pieces
// (gemm_f32_gathered_b, gemm_bf16_gathered_b) as runs of consecutive columns
// in one piece.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace poolops {

constexpr int64_t kTileRows = 14, kTileCols = 32;

#if defined(__x86_64__) || defined(_M_X64)
// c (kTileRows x kTileCols, row stride ldc) = the tile's rows (c0: columns
// 0-15, c1: 16-31), plus c when acc.
__attribute__((target("avx512f"), always_inline)) inline void store_tile(__m512 (&c0)[kTileRows],
                                                                         __m512 (&c1)[kTileRows], float* c,
                                                                         int64_t ldc, bool acc) {
  for (int64_t i = 0; i < kTileRows; ++i, c += ldc) {
    if (acc) {
      c0[i] = _mm512_add_ps(_mm512_loadu_ps(c), c0[i]);
      c1[i] = _mm512_add_ps(_mm512_loadu_ps(c + 16), c1[i]);
    }
    _mm512_storeu_ps(c, c0[i]);
    _mm512_storeu_ps(c + 16, c1[i]);
  }
}
#endif

// kernel(c, ldc, acc) computes a whole kTileRows x kTileCols tile of C; an
// mr x nr tile at C's edge goes through a scratch tile holding C's values
// (zeros without acc), of which only mr x nr go back.
template <typename Kernel>
inline void run_tile(int64_t mr, int64_t nr, float* c, int64_t ldc, bool acc, const Kernel& kernel) {
  if (mr == kTileRows && nr == kTileCols) return kernel(c, ldc, acc);
  float tile[kTileRows * kTileCols];
  for (int64_t i = 0; i < mr; ++i) {
    for (int64_t j = 0; j < nr; ++j) tile[i * kTileCols + j] = acc ? c[i * ldc + j] : 0.f;
  }
  kernel(tile, kTileCols, true);
  for (int64_t i = 0; i < mr; ++i) std::copy(tile + i * kTileCols, tile + i * kTileCols + nr, c + i * ldc);
}

struct PieceRun {
  int64_t at, piece, offset, len;  // strip columns [at, at + len): the piece's elements from offset on
};

// Columns j0 .. j0 + n - 1 of rows made of pieces of width elements, into
// runs (room for n): returns how many.
inline int64_t piece_runs(int64_t j0, int64_t n, int64_t width, PieceRun* runs) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += runs[count++].len) {
    const int64_t j = j0 + i, offset = j % width;
    runs[count] = PieceRun{i, j / width, offset, std::min(width - offset, n - i)};
  }
  return count;
}

}  // namespace poolops
