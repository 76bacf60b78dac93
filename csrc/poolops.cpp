// Every poolops operator schema, declared once. Kernels live in cpu/ and cuda/;
// fake (meta) kernels are registered from Python, autograd in autograd.cpp (the backward ops' in Python).
#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda.h>
#endif

#include <cstdint>

#include "cpu/indirect_gemm.h"
#include "output_alloc.h"

namespace poolops {
namespace {

int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

// Whether the CPU's dense conv2d of this dtype runs the indirect GEMM (tests pick their bounds by it).
bool cpu_indirect_gemm(c10::ScalarType dtype) { return indirect_gemm_supported(dtype, 1); }

}  // namespace
}  // namespace poolops

TORCH_LIBRARY(poolops, m) {
  m.def("_cuda_version() -> int", &poolops::cuda_version);
  m.def("_empty_cpu_cache() -> int", &poolops::empty_cpu_cache);
  m.def("_cpu_indirect_gemm(ScalarType dtype) -> bool", &poolops::cpu_indirect_gemm);

  m.def(
      "max_pool2d_with_indices(Tensor self, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d(Tensor self, int[] kernel_size, int[] stride, int[] padding, int[] dilation, bool ceil_mode) "
      "-> Tensor");
  // For training without indices: the argmax's tap within its window, one byte per output.
  m.def(
      "max_pool2d_with_taps(Tensor self, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[] input_size, int[] kernel_size, "
      "int[] stride, int[] padding, int[] dilation, bool ceil_mode) -> Tensor");

  m.def(
      "avg_pool2d(Tensor self, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override, int[] dilation=[1]) -> Tensor");
  m.def(
      "_avg_pool2d_backward(Tensor grad_output, SymInt[] input_size, int[] kernel_size, int[] stride, "
      "int[] padding, bool ceil_mode, bool count_include_pad, int? divisor_override, int[] dilation=[1]) -> Tensor");

  m.def("adaptive_avg_pool2d(Tensor self, int[] output_size) -> Tensor");
  m.def("_adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[] input_size) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor self, int[] output_size) -> (Tensor, Tensor)");
  m.def("_adaptive_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[] input_size) -> Tensor");

  m.def("global_avg_pool2d(Tensor self) -> Tensor");
  m.def("_global_avg_pool2d_backward(Tensor grad_output, SymInt[] input_size) -> Tensor");
  m.def("global_max_pool2d(Tensor self) -> (Tensor, Tensor)");
  m.def("_global_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[] input_size) -> Tensor");

  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups) "
      "-> Tensor");
  m.def(
      "_conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[] input_size, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
  m.def(
      "_conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[] weight_size, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
}
