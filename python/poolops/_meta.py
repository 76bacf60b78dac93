"""Fake (meta) kernels: output shapes, dtypes and strides without touching data,
so torch.compile, torch.export and FakeTensor work."""
import torch

from ._args import max_pool2d_output_shape, memory_format_of


def _new(like: torch.Tensor, shape, dtype, memory_format):
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format)


@torch.library.register_fake("poolops::max_pool2d_with_indices")
def _max_pool2d_with_indices_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = max_pool2d_output_shape(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    fmt = memory_format_of(x)
    return _new(x, shape, x.dtype, fmt), _new(x, shape, torch.int64, fmt)


@torch.library.register_fake("poolops::max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = max_pool2d_output_shape(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return _new(x, shape, x.dtype, memory_format_of(x))


@torch.library.register_fake("poolops::_max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(indices.dtype == torch.int64,
                 lambda: f"max_pool2d_backward: indices must be int64, but got {indices.dtype}")
    expected = max_pool2d_output_shape(input_size, kernel_size, stride, padding, dilation, ceil_mode)
    torch._check(list(grad_output.shape) == expected and list(indices.shape) == expected,
                 lambda: f"max_pool2d_backward: expected grad_output and indices of size {expected}, "
                 f"but got {list(grad_output.shape)} and {list(indices.shape)}")
    return _new(grad_output, input_size, grad_output.dtype, memory_format_of(indices))


from ._args import conv2d_output_shape, conv_memory_format  # noqa: E402


@torch.library.register_fake("poolops::conv2d")
def _conv2d_fake(x, weight, bias, stride, padding, dilation, groups):
    shape = conv2d_output_shape(x, weight, bias, stride, padding, dilation, groups)
    return _new(x, shape, x.dtype, conv_memory_format(x, weight))


@torch.library.register_fake("poolops::_conv2d_backward_input")
def _conv2d_backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    torch._check(len(input_size) == 4, lambda: f"conv2d backward: input_size must have 4 elements, but got {input_size}")
    probe = torch.empty(input_size, dtype=weight.dtype, device="meta")
    expected = conv2d_output_shape(probe, weight, None, stride, padding, dilation, groups)
    torch._check(grad_output.dtype == weight.dtype,
                 lambda: f"expected scalar type {weight.dtype} but found {grad_output.dtype}")
    torch._check(list(grad_output.shape) == expected,
                 lambda: f"conv2d backward: expected grad_output of size {expected}, but got {list(grad_output.shape)}")
    return _new(grad_output, input_size, grad_output.dtype, conv_memory_format(grad_output, weight))


@torch.library.register_fake("poolops::_conv2d_backward_weight")
def _conv2d_backward_weight_fake(grad_output, x, weight_size, stride, padding, dilation, groups):
    torch._check(len(weight_size) == 4,
                 lambda: f"conv2d backward: weight_size must have 4 elements, but got {weight_size}")
    probe = torch.empty(weight_size, dtype=x.dtype, device="meta")
    expected = conv2d_output_shape(x, probe, None, stride, padding, dilation, groups)
    torch._check(grad_output.dtype == x.dtype, lambda: f"expected scalar type {x.dtype} but found {grad_output.dtype}")
    torch._check(list(grad_output.shape) == expected,
                 lambda: f"conv2d backward: expected grad_output of size {expected}, but got {list(grad_output.shape)}")
    return _new(x, weight_size, x.dtype, torch.contiguous_format)
