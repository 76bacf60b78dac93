// A float32 GEMM for x86 CPUs with AVX-512 (the dense conv2d path). On this
// project's reference machine (AMD EPYC Zen 5) at::mm goes through MKL's AVX2
// code at about half the AVX-512 peak; this kernel reaches 200-240 GFLOPS on
// one core.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>

namespace poolops {

// True when the CPU has AVX-512F (checked at run time: such code is built
// with a per-function target, so the library still loads on AVX2-only CPUs)
// and POOLOPS_AVX512=0 is not set.
bool avx512_enabled();

// avx512_enabled(), and the CPU has AVX512-BF16 dot products.
bool avx512_bf16_enabled();

// avx512_enabled(), and POOLOPS_GEMM=0 is not set: the project's GEMMs (this
// one and indirect_gemm.h) may run.
bool own_gemm_enabled();

// C (M x N, row stride ldc, unit column stride) = A (M x K) * B (K x N), plus
// C when accumulate. A and B may have any element strides (rs = between rows,
// cs = between columns), so transposed views need no copy. Each element of C
// sums its K products in a fixed order whatever the thread count.
void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B, int64_t rsb,
              int64_t csb, float* C, int64_t ldc, bool accumulate);

// rows(k0, kc, table) sets table[k * pieces + p], for k < kc and p < pieces,
// to piece p of row k0 + k of B (gemm_f32_gathered_b), or null for zeros.
using GatheredRows = c10::function_ref<void(int64_t k0, int64_t kc, const float** table)>;

// gemm_f32 with row k of B made of pieces = ceil(N / width) runs of width
// floats gathered through pointers (the last run cut at N): a convolution's
// weight gradient reads its input pixels as B's rows without im2col columns.
void gemm_f32_gathered_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, int64_t width,
                         const GatheredRows& rows, float* C, int64_t ldc, bool accumulate);

using GatheredRowsBf16 = c10::function_ref<void(int64_t k0, int64_t kc, const c10::BFloat16** table)>;

// gemm_f32_gathered_b for bfloat16 A and B (C float, overwritten): products
// summed in float with AVX512-BF16 (gemm_bf16.cpp). Only where
// avx512_bf16_enabled().
void gemm_bf16_gathered_b(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t rsa, int64_t csa,
                          int64_t width, const GatheredRowsBf16& rows, float* C, int64_t ldc);

}  // namespace poolops
