// Parallel element loops shared by the CPU backward kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "../pool_math.h"

namespace poolops {

// Runs fn(n, c, h, w, i) for every element i of a dense (N, C, H, W) tensor in
// the layout's memory order, decoding the coordinates once per innermost row.
template <typename Fn>
void for_each_element(int64_t N, int64_t C, int64_t H, int64_t W, bool channels_last, int64_t grain,
                      const Fn& fn) {
  const int64_t inner = channels_last ? C : W;
  at::parallel_for(0, N * C * H * W / inner, std::max<int64_t>(1, grain / inner), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t n, c, h, w;
      decode_nchw(r * inner, C, H, W, channels_last, n, c, h, w);
      if (channels_last) {
        for (int64_t k = 0; k < C; ++k) fn(n, k, h, w, r * inner + k);
      } else {
        for (int64_t k = 0; k < W; ++k) fn(n, c, h, k, r * inner + k);
      }
    }
  });
}

}  // namespace poolops
