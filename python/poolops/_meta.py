"""Fake (meta) kernels: output shapes, dtypes and strides without touching data,
so torch.compile, torch.export and FakeTensor work."""
import torch

from ._args import (
    adaptive_output_shape,
    avg_pool2d_output_shape,
    global_output_shape,
    max_pool2d_output_shape,
    memory_format_of,
)


def _new(like: torch.Tensor, shape, dtype, memory_format):
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format)


@torch.library.register_fake("poolops::max_pool2d_with_indices")
def _max_pool2d_with_indices_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = max_pool2d_output_shape(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    fmt = memory_format_of(x)
    return _new(x, shape, x.dtype, fmt), _new(x, shape, torch.int64, fmt)


@torch.library.register_fake("poolops::max_pool2d_with_taps")
def _max_pool2d_with_taps_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = max_pool2d_output_shape(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    taps = kernel_size[0] * kernel_size[-1]
    torch._check(taps <= 255, lambda: f"max_pool2d_with_taps: a {kernel_size[0]}x{kernel_size[-1]} window has more "
                 "than 255 taps; use max_pool2d_with_indices")
    fmt = memory_format_of(x)
    return _new(x, shape, x.dtype, fmt), _new(x, shape, torch.uint8, fmt)


@torch.library.register_fake("poolops::max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = max_pool2d_output_shape(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return _new(x, shape, x.dtype, memory_format_of(x))


@torch.library.register_fake("poolops::avg_pool2d")
def _avg_pool2d_fake(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation=(1,)):
    shape = avg_pool2d_output_shape(x.shape, kernel_size, stride, padding, ceil_mode, divisor_override, dilation)
    return _new(x, shape, x.dtype, memory_format_of(x))


def _check_grad_output(op, grad_output, expected, indices=None, taps_allowed=False):
    torch._check(list(grad_output.shape) == expected,
                 lambda: f"{op}_backward: expected grad_output of size {expected}, but got {list(grad_output.shape)}")
    if indices is not None:
        torch._check(indices.device == grad_output.device,
                     lambda: f"{op}_backward: grad_output and indices must be on the same device, "
                     f"but got {grad_output.device} and {indices.device}")
        torch._check(indices.dtype == torch.int64 or (taps_allowed and indices.dtype == torch.uint8),
                     lambda: f"{op}_backward: indices must be int64{' (or uint8 taps)' if taps_allowed else ''}, "
                     f"but got {indices.dtype}")
        torch._check(list(indices.shape) == expected,
                     lambda: f"{op}_backward: expected indices of size {expected}, but got {list(indices.shape)}")


@torch.library.register_fake("poolops::_max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    expected = max_pool2d_output_shape(input_size, kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad_output("max_pool2d", grad_output, expected, indices, taps_allowed=True)
    return _new(grad_output, input_size, grad_output.dtype, memory_format_of(indices))


@torch.library.register_fake("poolops::_avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override, dilation=(1,)):
    expected = avg_pool2d_output_shape(input_size, kernel_size, stride, padding, ceil_mode, divisor_override,
                                       dilation)
    _check_grad_output("avg_pool2d", grad_output, expected)
    return _new(grad_output, input_size, grad_output.dtype, memory_format_of(grad_output))


@torch.library.register_fake("poolops::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(x, output_size):
    shape = adaptive_output_shape(x.shape, output_size, "adaptive_avg_pool2d")
    return _new(x, shape, x.dtype, memory_format_of(x))


@torch.library.register_fake("poolops::adaptive_max_pool2d")
def _adaptive_max_pool2d_fake(x, output_size):
    shape = adaptive_output_shape(x.shape, output_size, "adaptive_max_pool2d")
    fmt = memory_format_of(x)
    return _new(x, shape, x.dtype, fmt), _new(x, shape, torch.int64, fmt)


@torch.library.register_fake("poolops::_adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input_size):
    expected = adaptive_output_shape(input_size, list(grad_output.shape[-2:]), "adaptive_avg_pool2d")
    _check_grad_output("adaptive_avg_pool2d", grad_output, expected)
    return _new(grad_output, input_size, grad_output.dtype, memory_format_of(grad_output))


@torch.library.register_fake("poolops::_adaptive_max_pool2d_backward")
def _adaptive_max_pool2d_backward_fake(grad_output, indices, input_size):
    expected = adaptive_output_shape(input_size, list(grad_output.shape[-2:]), "adaptive_max_pool2d")
    _check_grad_output("adaptive_max_pool2d", grad_output, expected, indices)
    return _new(grad_output, input_size, grad_output.dtype, memory_format_of(indices))


@torch.library.register_fake("poolops::global_avg_pool2d")
def _global_avg_pool2d_fake(x):
    return _new(x, global_output_shape(x.shape, "global_avg_pool2d"), x.dtype, memory_format_of(x))


@torch.library.register_fake("poolops::global_max_pool2d")
def _global_max_pool2d_fake(x):
    shape = global_output_shape(x.shape, "global_max_pool2d")
    fmt = memory_format_of(x)
    return _new(x, shape, x.dtype, fmt), _new(x, shape, torch.int64, fmt)


@torch.library.register_fake("poolops::_global_avg_pool2d_backward")
def _global_avg_pool2d_backward_fake(grad_output, input_size):
    _check_grad_output("global_avg_pool2d", grad_output, global_output_shape(input_size, "global_avg_pool2d"))
    return _new(grad_output, input_size, grad_output.dtype, memory_format_of(grad_output))


@torch.library.register_fake("poolops::_global_max_pool2d_backward")
def _global_max_pool2d_backward_fake(grad_output, indices, input_size):
    _check_grad_output("global_max_pool2d", grad_output, global_output_shape(input_size, "global_max_pool2d"),
                       indices)
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
