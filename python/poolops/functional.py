"""Functional API with the signatures of torch.nn.functional."""
import torch

from ._args import int_list

_ops = torch.ops.poolops

__all__ = ["max_pool2d", "max_pool2d_with_indices"]


def _pool_params(op, kernel_size, stride, padding, dilation):
    return (
        int_list(kernel_size, "kernel_size", op),
        [] if stride is None else int_list(stride, "stride", op),
        int_list(padding, "padding", op),
        int_list(dilation, "dilation", op),
    )


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling over (N, C, H, W) or (C, H, W) input, like
    torch.nn.functional.max_pool2d. Indices are flat offsets within each H×W
    plane (max_unpool2d accepts them); ties go to the first element in
    row-major order and NaN propagates. Without return_indices and without a
    gradient to compute, no indices are written at all."""
    params = _pool_params("max_pool2d", kernel_size, stride, padding, dilation)
    if return_indices or (torch.is_grad_enabled() and input.requires_grad):
        out, indices = _ops.max_pool2d_with_indices(input, *params, bool(ceil_mode))
        return (out, indices) if return_indices else out
    return _ops.max_pool2d(input, *params, bool(ceil_mode))


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """max_pool2d(..., return_indices=True)."""
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)


__all__ += ["conv2d"]


def _same_padding(input, weight, stride, dilation):
    """padding='same' (stride 1 only): total d*(k-1) per dim, left = total // 2.
    An odd total pads the extra right/bottom column/row explicitly, as ATen does."""
    import warnings

    from ._args import conv_param

    if any(s != 1 for s in conv_param(stride, "stride")):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    dh, dw = conv_param(dilation, "dilation")[:2]
    total = [dh * (weight.shape[-2] - 1), dw * (weight.shape[-1] - 1)]
    extra = [t % 2 for t in total]
    if any(extra):
        warnings.warn("Using padding='same' with even kernel lengths and odd dilation may require a zero-padded "
                      "copy of the input be created")
        input = torch.nn.functional.pad(input, [0, extra[1], 0, extra[0]])
    return input, [total[0] // 2, total[1] // 2]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution over (N, C, H, W) or (C, H, W) input, like
    torch.nn.functional.conv2d (padding may be 'valid' or 'same'). Dense
    convolutions run as im2col plus a BLAS (CPU) or cuBLAS (CUDA) matrix
    product; depthwise ones (groups == C) run a direct kernel. The output is
    channels_last when the input or the weight is."""
    from ._args import conv_param

    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            input, padding = _same_padding(input, weight, stride, dilation)
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
