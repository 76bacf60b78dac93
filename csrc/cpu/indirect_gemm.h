// A GEMM whose rows of A are gathered through pointers (an "indirect" GEMM,
// as XNNPACK calls it): row m of C is
//   c_m[n] = bias[n] + sum over taps t, k < K of a_{m,t}[k] * B_t[k][n],
// with a_{m,t} any K-element row (a pixel's channels, or a row of zeros for
// padding). A channels-last convolution then runs without im2col columns.
// AVX-512 only (float32; bfloat16 also needs AVX512-BF16) and off with
// POOLOPS_GEMM=0, so callers check indirect_gemm_supported first.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>
#include <vector>

namespace poolops {

// Rows gathered per register tile.
constexpr int64_t kIndirectRows = 6;

bool indirect_gemm_supported(at::ScalarType type, int64_t K);

// B_t for t < taps packed for indirect_gemm: element (k, n) of B_t is
// tap_base[t][k * sk + n * sn].
template <typename T>
std::vector<T> pack_indirect_b(const std::vector<const T*>& tap_base, int64_t K, int64_t N, int64_t sk, int64_t sn);

// rows(m0, mr, a, c) describes rows m0 .. m0 + mr - 1 (mr <= kIndirectRows):
// for each r < mr, a[r * taps + t] (t < taps) is the row A gathers for row
// m0 + r through tap t and c[r] where that row of C goes (N elements). bias
// (N floats) may be null. Each element of C sums its products in one fixed
// order, whatever the threads.
template <typename T>
void indirect_gemm(int64_t M, int64_t N, int64_t taps, int64_t K, const T* packed_b, const float* bias,
                   c10::function_ref<void(int64_t m0, int64_t mr, const T** a, T** c)> rows);

}  // namespace poolops
