// C++ checks without Python: the operators are reachable through the
// dispatcher, agree with ATen, and the CUDA kernels' per-element math
// (pool_math.h, run here on the CPU) reproduces the CPU kernels' results.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <tuple>
#include <vector>

#include "cpu/gemm.h"
#include "pool_math.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

using Ints = at::IntArrayRef;

std::tuple<at::Tensor, at::Tensor> poolops_max_pool2d(const at::Tensor& x, Ints k, Ints s, Ints p, Ints d, bool ceil) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("poolops::max_pool2d_with_indices", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, Ints, Ints, Ints, Ints, bool)>();
  return op.call(x, k, s, p, d, ceil);
}

at::Tensor poolops_backward(const at::Tensor& g, const at::Tensor& idx, c10::SymIntArrayRef size, Ints k, Ints s,
                            Ints p, Ints d, bool ceil) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("poolops::_max_pool2d_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, Ints, Ints, Ints, Ints, bool)>();
  return op.call(g, idx, size, k, s, p, d, ceil);
}

// The forward and the gather backward evaluated element by element with the
// shared device functions, as the CUDA kernels do.
std::tuple<at::Tensor, at::Tensor, at::Tensor> device_math(const at::Tensor& x, const at::Tensor& gout,
                                                           const poolops::Pool2dGeom& g) {
  auto out = at::empty({g.N, g.C, g.OH, g.OW}, x.options());
  auto idx = at::empty({g.N, g.C, g.OH, g.OW}, x.options().dtype(at::kLong));
  auto gin = at::empty({g.N, g.C, g.H, g.W}, x.options());
  const float* xp = x.const_data_ptr<float>();
  for (int64_t pl = 0; pl < g.N * g.C; ++pl) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        float best;
        int64_t arg;
        poolops::max_pool_scan(xp + pl * g.H * g.W, g.W, int64_t(1), g.W,
                               poolops::max_pool_taps(oh, g.H, g.kh, g.sh, g.ph, g.dh),
                               poolops::max_pool_taps(ow, g.W, g.kw, g.sw, g.pw, g.dw), g.dh, g.dw, best, arg);
        out.data_ptr<float>()[(pl * g.OH + oh) * g.OW + ow] = best;
        idx.data_ptr<int64_t>()[(pl * g.OH + oh) * g.OW + ow] = arg;
      }
    }
  }
  for (int64_t pl = 0; pl < g.N * g.C; ++pl) {
    for (int64_t h = 0; h < g.H; ++h) {
      for (int64_t w = 0; w < g.W; ++w) {
        const int64_t o = pl * g.OH * g.OW;
        gin.data_ptr<float>()[(pl * g.H + h) * g.W + w] = poolops::max_pool_grad_gather<float, float>(
            gout.const_data_ptr<float>() + o, idx.const_data_ptr<int64_t>() + o, g.OW, 1, g, h, w);
      }
    }
  }
  return {out, idx, gin};
}

// gemm_f32 against a float64 reference: tile, K-block, M-block and N-block
// edges, transposed operands and accumulation into C.
void check_gemm() {
  if (!poolops::own_gemm_enabled()) {
    std::printf("skip gemm_f32 (no AVX-512 or POOLOPS_GEMM=0)\n");
    return;
  }
  struct Shape {
    int64_t M, N, K;
  };
  for (const Shape sh : {Shape{1, 1, 1}, Shape{14, 32, 256}, Shape{15, 33, 257}, Shape{200, 70, 600},
                         Shape{30, 1100, 40}, Shape{7, 5, 0}}) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool ta = variant & 1, tb = variant & 2;
      const at::Tensor a = ta ? at::randn({sh.K, sh.M}).t() : at::randn({sh.M, sh.K});
      const at::Tensor b = tb ? at::randn({sh.N, sh.K}).t() : at::randn({sh.K, sh.N});
      const at::Tensor c0 = at::randn({sh.M, sh.N});
      for (const bool acc : {false, true}) {
        at::Tensor c = c0.clone();
        poolops::gemm_f32(sh.M, sh.N, sh.K, a.data_ptr<float>(), a.stride(0), a.stride(1), b.data_ptr<float>(),
                          b.stride(0), b.stride(1), c.data_ptr<float>(), c.stride(0), acc);
        at::Tensor ref = at::mm(a.to(at::kDouble), b.to(at::kDouble));
        if (acc) ref += c0.to(at::kDouble);
        const double err = (c.to(at::kDouble) - ref).abs().max().item<double>();
        char what[128];
        std::snprintf(what, sizeof(what), "gemm_f32 %ldx%ldx%ld%s%s%s (max err %.1e)", long(sh.M), long(sh.N),
                      long(sh.K), ta ? " A^T" : "", tb ? " B^T" : "", acc ? " +C" : "", err);
        expect(err < 1e-3, what);
        // A read in place (rows contiguous along K) and A packed sum in the same order: same bits.
        const at::Tensor a_other = ta ? a.contiguous() : a.t().contiguous().t();
        at::Tensor c_other = c0.clone();
        poolops::gemm_f32(sh.M, sh.N, sh.K, a_other.data_ptr<float>(), a_other.stride(0), a_other.stride(1),
                          b.data_ptr<float>(), b.stride(0), b.stride(1), c_other.data_ptr<float>(), c_other.stride(0),
                          acc);
        std::snprintf(what, sizeof(what), "gemm_f32 %ldx%ldx%ld%s%s%s: A in place and packed agree bit for bit",
                      long(sh.M), long(sh.N), long(sh.K), ta ? " A^T" : "", tb ? " B^T" : "", acc ? " +C" : "");
        expect(at::equal(c, c_other), what);
      }
    }
  }
}

}  // namespace

int main() {
  check_gemm();
  at::manual_seed(0);
  struct Cfg {
    int64_t k, s, p, d;
    bool ceil;
  };
  for (const Cfg c : {Cfg{3, 2, 1, 1, false}, Cfg{2, 2, 0, 1, true}, Cfg{3, 1, 1, 2, true}, Cfg{2, 1, 1, 3, false}}) {
    // Small integers: many ties, so the tie rule and the summation order matter.
    const at::Tensor x = at::randint(0, 4, {2, 3, 9, 7}).to(at::kFloat);
    auto [out, idx] = poolops_max_pool2d(x, {c.k}, {c.s}, {c.p}, {c.d}, c.ceil);
    auto [ref_out, ref_idx] = at::max_pool2d_with_indices(x, {c.k, c.k}, {c.s, c.s}, {c.p, c.p}, {c.d, c.d}, c.ceil);
    const bool empty_windows = (ref_idx >= 63).any().item<bool>();  // out-of-plane (pytorch#114216)
    expect(at::equal(out, ref_out), "forward values equal ATen");
    expect(empty_windows || at::equal(idx, ref_idx), "forward indices equal ATen");

    const poolops::Pool2dGeom g{2, 3, 9, 7, out.size(2), out.size(3), c.k, c.k, c.s, c.s, c.p, c.p, c.d, c.d};
    const at::Tensor gout = at::randn(out.sizes());
    const at::Tensor gin = poolops_backward(gout, idx, c10::fromIntArrayRefSlow(x.sizes()), {c.k}, {c.s}, {c.p},
                                            {c.d}, c.ceil);
    auto [dev_out, dev_idx, dev_gin] = device_math(x, gout, g);
    expect(at::equal(dev_out, out) && at::equal(dev_idx, idx), "device scan equals CPU kernel");
    expect(at::equal(dev_gin, gin), "device gather backward equals CPU scatter, bit for bit");
    if (!empty_windows) {
      const at::Tensor ref_gin = at::max_pool2d_with_indices_backward(gout, x, {c.k, c.k}, {c.s, c.s}, {c.p, c.p},
                                                                       {c.d, c.d}, c.ceil, ref_idx);
      expect(at::equal(gin, ref_gin), "backward equals ATen");
    }
  }
  expect(poolops::pool_output_size(5, 3, 3, 1, 1, true) == 2, "ceil window starting in padding dropped");
  expect(poolops::pool_output_size(6, 1, 2, 0, 1, true) == 3, "ceil k=1 s=2 (#45357)");
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
