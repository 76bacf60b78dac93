"""Functional API with the signatures of torch.nn.functional."""
import torch

from ._args import adaptive_output_size, check_tensor, int_list, same_padding

_ops = torch.ops.poolops

__all__ = [
    "max_pool2d",
    "max_pool2d_with_indices",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "global_avg_pool2d",
    "global_max_pool2d",
    "conv2d",
]


def _max_pool_params(input, kernel_size, stride, padding, dilation, ceil_mode):
    op = "max_pool2d"
    kernel = int_list(kernel_size, "kernel_size", op)
    strides = [] if stride is None else int_list(stride, "stride", op)
    dilations = int_list(dilation, "dilation", op)
    if padding in ("same", "valid"):
        if padding == "valid":
            padding = 0
        elif ceil_mode:
            raise RuntimeError("max_pool2d: padding='same' does not take ceil_mode")
        else:
            padding = same_padding(input.shape[-2:], kernel, strides or kernel, dilations)
    return kernel, strides, int_list(padding, "padding", op), dilations


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling over (N, C, H, W) or (C, H, W) input, like
    torch.nn.functional.max_pool2d. Indices are flat offsets within each H×W
    plane (max_unpool2d accepts them); ties go to the first element in
    row-major order and NaN propagates. Without return_indices, no indices are
    written when no gradient is needed, and for training only the argmax's tap
    within its window is kept (one byte per output instead of eight).

    padding may also be 'valid' (0) or 'same', TensorFlow's: the output is
    ceil(input / stride) and the padding, max((out - 1) * stride +
    dilation * (k - 1) + 1 - input, 0) per dim with the odd pixel at the
    bottom/right, is never selected. It is applied inside the kernels, with no
    padded copy of the input. Explicit padding may be given per side as four
    ints [top, bottom, left, right] (each below the effective kernel size,
    without ceil_mode)."""
    check_tensor(input, "max_pool2d")
    params = _max_pool_params(input, kernel_size, stride, padding, dilation, ceil_mode)
    if return_indices:
        return _ops.max_pool2d_with_indices(input, *params, bool(ceil_mode))
    if torch.is_grad_enabled() and input.requires_grad:
        kernel = params[0]
        with_argmax = _ops.max_pool2d_with_taps if kernel[0] * kernel[-1] <= 255 else _ops.max_pool2d_with_indices
        return with_argmax(input, *params, bool(ceil_mode))[0]
    return _ops.max_pool2d(input, *params, bool(ceil_mode))


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """max_pool2d(..., return_indices=True)."""
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, dilation=1):
    """2-D average pooling over (N, C, H, W) or (C, H, W) input, like
    torch.nn.functional.avg_pool2d: a sequential row-major window sum in the
    accumulation type, then a true division by the window's divisor (padding
    counted or not; the ceil-mode overhang never is), or by divisor_override.

    dilation spaces the taps as in max_pool2d; the divisor counts the dilated
    taps (inside the padded input with count_include_pad, else on real
    elements). padding may also be 'valid' (0), four ints [top, bottom, left,
    right] (as for max_pool2d), or 'same', TensorFlow's (see max_pool2d): then
    each output is divided by the number of real input elements in its window,
    as TensorFlow does, whatever count_include_pad says."""
    check_tensor(input, "avg_pool2d")
    kernel = int_list(kernel_size, "kernel_size", "avg_pool2d")
    strides = [] if stride is None else int_list(stride, "stride", "avg_pool2d")
    dilations = int_list(dilation, "dilation", "avg_pool2d")
    if padding == "valid":
        padding = 0
    elif padding == "same":
        if ceil_mode:
            raise RuntimeError("avg_pool2d: padding='same' does not take ceil_mode")
        padding = same_padding(input.shape[-2:], kernel, strides or kernel, dilations)
        count_include_pad = False
    pads = int_list(padding, "padding", "avg_pool2d")
    if divisor_override is not None:
        (divisor_override,) = int_list(divisor_override, "divisor_override", "avg_pool2d")
    return _ops.avg_pool2d(input, kernel, strides, pads, bool(ceil_mode), bool(count_include_pad), divisor_override,
                           dilations)


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling to output_size (an int, or a pair whose None
    entries keep the input size), like torch.nn.functional.adaptive_avg_pool2d.
    Output (o_h, o_w) averages rows [floor(o_h*H/OH), ceil((o_h+1)*H/OH)) and
    likewise for columns. The backward is a deterministic gather."""
    check_tensor(input, "adaptive_avg_pool2d")
    return _ops.adaptive_avg_pool2d(input, adaptive_output_size(output_size, input.shape, "adaptive_avg_pool2d"))


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive max pooling, like torch.nn.functional.adaptive_max_pool2d.
    Indices are flat offsets within each H×W plane; ties and NaN follow
    max_pool2d. The backward is a deterministic gather."""
    check_tensor(input, "adaptive_max_pool2d")
    out, indices = _ops.adaptive_max_pool2d(input, adaptive_output_size(output_size, input.shape, "adaptive_max_pool2d"))
    return (out, indices) if return_indices else out


def global_avg_pool2d(input):
    """Mean over H×W: (N, C, 1, 1) for (N, C, H, W) input, (C, 1, 1) for (C, H, W).
    Equals adaptive_avg_pool2d(input, 1) to float rounding."""
    check_tensor(input, "global_avg_pool2d")
    return _ops.global_avg_pool2d(input)


def global_max_pool2d(input, return_indices=False):
    """Max over H×W: (N, C, 1, 1) or (C, 1, 1); equals adaptive_max_pool2d(input, 1),
    indices included."""
    check_tensor(input, "global_max_pool2d")
    out, indices = _ops.global_max_pool2d(input)
    return (out, indices) if return_indices else out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution over (N, C, H, W) or (C, H, W) input, like
    torch.nn.functional.conv2d. padding may also be 'valid' or 'same' at any
    stride, TensorFlow's 'same' (see max_pool2d; at stride 1 it is torch's),
    applied inside the kernels without a padded copy of the input, or four
    ints [top, bottom, left, right]. Dense
    convolutions run as im2col plus a BLAS (CPU) or cuBLAS (CUDA) matrix
    product; depthwise ones (groups == C) run a direct kernel. The output is
    channels_last when the input or the weight is."""
    from ._args import conv_param

    check_tensor(input, "conv2d")
    check_tensor(weight, "conv2d", "weight")
    device_type = input.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # conv2d is on autocast's lower-precision list, like F.conv2d.
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
            return conv2d(input, weight, bias, stride, padding, dilation, groups)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            padding = same_padding(input.shape[-2:], weight.shape[-2:], conv_param(stride, "stride"),
                                   conv_param(dilation, "dilation"))
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = conv_param(padding, "padding")
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.SymInt)):
        raise TypeError(f"conv2d(): argument 'groups' must be int, not {type(groups).__name__}")
    unbatched = input.dim() == 3
    out = _ops.conv2d(input.unsqueeze(0) if unbatched else input, weight, bias, conv_param(stride, "stride"),
                      padding, conv_param(dilation, "dilation"), groups)
    return out.squeeze(0) if unbatched else out
