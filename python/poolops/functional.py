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
