"""Argument normalisation for the functional API and the Python copy of the
output-size formula and checks that the fake (meta) kernels need.

The C++ copy lives in csrc/pool_math.h and csrc/pool_args.cpp; tests check that
both agree over the spec's sweep.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

_INT32_MAX = 2**31 - 1


def check_tensor(value, op: str, name: str = "input") -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}(): argument '{name}' must be a Tensor, not {type(value).__name__}")


def int_list(value, name: str, op: str) -> list[int]:
    """An int or a sequence of ints as a list of ints, rejecting floats and
    values that do not fit the kernels' 32-bit parameters (as torch does)."""
    # Plain ints first: these checks run on every call of every op.
    kind = type(value)
    if kind is int:
        if -_INT32_MAX - 1 <= value <= _INT32_MAX:
            return [value]
    elif kind is tuple or kind is list:
        if all(type(v) is int and -_INT32_MAX - 1 <= v <= _INT32_MAX for v in value):
            return list(value)
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    out = []
    for pos, v in enumerate(items):
        if isinstance(v, torch.SymInt):
            out.append(v)
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(
                f"{op}(): argument '{name}' must be an int or a tuple of ints, "
                f"but found {v!r} of type {type(v).__name__} at pos {pos}"
            )
        if not -_INT32_MAX - 1 <= v <= _INT32_MAX:
            raise RuntimeError(f"{op}(): {name}={v}: value cannot be converted to type int without overflow")
        out.append(v)
    return out


def _pick(v: Sequence[int], i: int):
    return v[0] if len(v) == 1 else v[i]


def _trunc_div(a, b):
    """C++ integer division (toward zero), as in ATen's checks."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def pool_output_size(size, k, s, p, d, ceil_mode):
    eff = d * (k - 1) + 1
    out = sweep_output_size(size, eff, s, p, p + (s - 1 if ceil_mode else 0))
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def sweep_output_size(size, eff, s, p_begin, p_end):
    """Windows of extent eff, s apart, in size positions padded by p_begin and p_end (floor mode)."""
    return (size + p_begin + p_end - eff) // s + 1


def same_padding(size, kernel_size, stride, dilation) -> list:
    """TensorFlow's padding='same' for a spatial size (H, W), as [top, bottom, left, right]:
    the output is ceil(size / stride), the total padding
    max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0), and an odd
    total puts the extra pixel at the bottom/right. Parameters the ops will
    reject (non-positive, wrong length) give zeros, so the op reports them."""
    params = [kernel_size, stride, dilation]
    if any(len(v) not in (1, 2) for v in params) or any(x <= 0 for v in params for x in v):
        return [0, 0, 0, 0]
    pads = []
    for i in range(2):
        k, s, d = _pick(kernel_size, i), _pick(stride, i), _pick(dilation, i)
        out = -(-size[i] // s)
        total = torch.sym_max((out - 1) * s + d * (k - 1) + 1 - size[i], 0)
        pads += [total // 2, total - total // 2]
    return pads


def top_left_padding(padding):
    """The (top, left) padding of a 1-, 2- or 4-element ([top, bottom, left, right]) padding list."""
    return (padding[0], padding[2]) if len(padding) == 4 else (_pick(padding, 0), _pick(padding, 1))


def _checked_sided_output_size(size, k, s, p_begin, p_end, d, op="max_pool2d"):
    torch._check(s != 0, lambda: "stride should not be zero")
    eff = (k - 1) * d + 1
    for p in (p_begin, p_end):
        torch._check(p >= 0, lambda: f"pad must be non-negative, but got pad: {p}")
        torch._check(p < eff, lambda: f"{op}: each pad must be smaller than the effective kernel size, but got "
                     f"pad={p}, kernel_size={k} and dilation={d}")
    return sweep_output_size(size, eff, s, p_begin, p_end)


def _checked_output_size(size, k, s, p, d, ceil_mode):
    torch._check(s != 0, lambda: "stride should not be zero")
    torch._check(p >= 0, lambda: f"pad must be non-negative, but got pad: {p}")
    torch._check(
        p <= _trunc_div((k - 1) * d + 1, 2),
        lambda: f"pad should be at most half of effective kernel size, but got pad={p}, "
        f"kernel_size={k} and dilation={d}",
    )
    return pool_output_size(size, k, s, p, d, ceil_mode)


def _read_pool_params(op, kernel_size, stride, padding, dilation, ceil_mode):
    """An op's (kh, kw, sh, sw, ph, pw, dh, dw) and whether the padding is
    [top, bottom, left, right], with ATen's length checks."""
    torch._check(len(kernel_size) in (1, 2),
                 lambda: f"{op}: kernel_size must either be a single int, or a tuple of two ints")
    torch._check(len(stride) in (0, 1, 2),
                 lambda: f"{op}: stride must either be omitted, a single int, or a tuple of two ints")
    torch._check(len(padding) in (1, 2, 4),
                 lambda: f"{op}: padding must either be a single int, or a tuple of two ints")
    torch._check(len(dilation) in (1, 2),
                 lambda: f"{op}: dilation must be either a single int, or a tuple of two ints")
    sided = len(padding) == 4
    torch._check(not (sided and ceil_mode),
                 lambda: f"{op}: ceil_mode is not supported with padding [top, bottom, left, right]")
    kh, kw = _pick(kernel_size, 0), _pick(kernel_size, 1)
    sh, sw = (kh, kw) if len(stride) == 0 else (_pick(stride, 0), _pick(stride, 1))
    ph, pw = top_left_padding(padding)
    dh, dw = _pick(dilation, 0), _pick(dilation, 1)
    return (kh, kw, sh, sw, ph, pw, dh, dw), sided


def _pool_output_hw(op, H, W, params, padding, sided, ceil_mode):
    kh, kw, sh, sw, ph, pw, dh, dw = params
    if sided:
        return (_checked_sided_output_size(H, kh, sh, padding[0], padding[1], dh, op),
                _checked_sided_output_size(W, kw, sw, padding[2], padding[3], dw, op))
    return _checked_output_size(H, kh, sh, ph, dh, ceil_mode), _checked_output_size(W, kw, sw, pw, dw, ceil_mode)


def _check_pool_output(C, H, W, oh, ow, params, sided):
    """ATen's last two checks of a sliding-window pool."""
    kh, kw, _, _, ph, pw, _, _ = params
    torch._check(sided or (kw // 2 >= pw and kh // 2 >= ph),
                 lambda: f"pad should be smaller than or equal to half of kernel size, but got padW = {pw}, "
                 f"padH = {ph}, kW = {kw}, kH = {kh}")
    torch._check(oh >= 1 and ow >= 1,
                 lambda: f"Given input size: ({C}x{H}x{W}). Calculated output size: ({C}x{oh}x{ow}). "
                 "Output size is too small")


def max_pool2d_output_shape(shape, kernel_size, stride, padding, dilation, ceil_mode) -> list:
    """Output shape of max_pool2d for an input shape, with ATen's checks in ATen's order."""
    params, sided = _read_pool_params("max_pool2d", kernel_size, stride, padding, dilation, ceil_mode)
    kh, kw, sh, sw, _, _, dh, dw = params
    torch._check(len(shape) in (3, 4), lambda: "non-empty 3D or 4D (batch mode) tensor expected for input")
    C, H, W = shape[-3:]
    oh, ow = _pool_output_hw("max_pool2d", H, W, params, padding, sided, ceil_mode)
    torch._check(kh > 0 and kw > 0, lambda: f"kernel size should be greater than zero, but got kH: {kh} kW: {kw}")
    torch._check(sh > 0 and sw > 0, lambda: f"stride should be greater than zero, but got dH: {sh} dW: {sw}")
    torch._check(dh > 0 and dw > 0,
                 lambda: f"dilation should be greater than zero, but got dilationH: {dh} dilationW: {dw}")
    torch._check(C > 0 and H > 0 and W > 0,
                 lambda: "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, "
                 f"but got:{list(shape)}")
    _check_pool_output(C, H, W, oh, ow, params, sided)
    return [*shape[:-2], oh, ow]


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout a pooling output takes: channels_last for a channels_last
    4-D input, contiguous otherwise (ATen's suggest_memory_format)."""
    if x.dim() == 4:
        from torch._prims_common import suggest_memory_format

        if suggest_memory_format(x) == torch.channels_last:
            return torch.channels_last
    return torch.contiguous_format


def avg_pool2d_output_shape(shape, kernel_size, stride, padding, ceil_mode, divisor_override, dilation=(1,)) -> list:
    """Output shape of avg_pool2d for an input shape, with ATen's checks in ATen's order (at dilation 1)."""
    params, sided = _read_pool_params("avg_pool2d", kernel_size, stride, padding, dilation, ceil_mode)
    kh, kw, sh, sw, _, _, dh, dw = params
    torch._check(divisor_override is None or divisor_override != 0, lambda: "divisor must be not zero")
    if len(shape) < 3:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-len(shape)}, {len(shape) - 1}], "
                         "but got -3)")
    torch._check(dh > 0 and dw > 0,
                 lambda: f"dilation should be greater than zero, but got dilationH: {dh} dilationW: {dw}")
    C, H, W = shape[-3:]
    oh, ow = _pool_output_hw("avg_pool2d", H, W, params, padding, sided, ceil_mode)
    torch._check(kh > 0 and kw > 0, lambda: f"kernel size should be greater than zero, but got kH: {kh} kW: {kw}")
    torch._check(sh > 0 and sw > 0, lambda: f"stride should be greater than zero, but got dH: {sh} dW: {sw}")
    torch._check(len(shape) in (3, 4) and C > 0 and H > 0 and W > 0,
                 lambda: "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, "
                 f"but got:{list(shape)}")
    _check_pool_output(C, H, W, oh, ow, params, sided)
    return [*shape[:-2], oh, ow]


def _check_plane_input(shape, op, sep):
    torch._check(len(shape) in (3, 4), lambda: f"{op}(): Expected 3D or 4D tensor, but got{sep}{list(shape)}")
    for d in range(len(shape) - 3, len(shape)):
        torch._check(shape[d] > 0,
                     lambda: f"{op}(): Expected input to have non-zero size for non-batch dimensions, but input has "
                     f"sizes {list(shape)} with dimension {d} being empty")


def adaptive_output_shape(shape, output_size, op) -> list:
    """Output shape of adaptive_{avg,max}_pool2d, with ATen's checks and messages."""
    if op == "adaptive_max_pool2d":
        torch._check(len(output_size) == 2, lambda: f"{op}(): internal error: output_size.size() must be 2")
        _check_plane_input(shape, op, ": ")
        out = [*shape[:-2], *output_size]
        for s in output_size:
            torch._check(s >= 0, lambda: f"Trying to create tensor with negative dimension {s}: {out}")
        return out
    torch._check(len(output_size) == 2, lambda: f"{op}: output_size must be 2")
    torch._check(output_size[0] >= 0 and output_size[1] >= 0,
                 lambda: f"{op}: elements of output_size must be greater than or equal to 0 but received "
                 f"{{{output_size[0]}, {output_size[1]}}}")
    _check_plane_input(shape, op, " ")
    return [*shape[:-2], *output_size]


def global_output_shape(shape, op) -> list:
    _check_plane_input(shape, op, " ")
    return [*shape[:-2], 1, 1]


def adaptive_output_size(output_size, input_shape, op="adaptive_pool2d") -> list:
    """output_size as a list: an int applies to both dims and a None entry takes
    the input's size (torch's _list_with_default)."""
    if not isinstance(output_size, Sequence) or isinstance(output_size, str):
        return int_list([output_size, output_size], "output_size", op)
    items = list(output_size)
    defaults = list(input_shape)[-len(items):] if items else []
    return int_list([d if v is None else v for v, d in zip(items, defaults)], "output_size", op)


def conv_param(value, name: str) -> list[int]:
    """stride/padding/dilation of conv2d as a list: one int is used for both
    dims; other lengths are left for the op to reject with torch's message."""
    items = int_list(value, name, "conv2d")
    return items * 2 if len(items) == 1 else items


def _aten_name(dtype):  # ScalarType spelling: Float, Double, BFloat16, ...
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
            torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
            torch.uint8: "Byte"}.get(dtype, str(dtype))


def _c_name(dtype):  # TypeMeta spelling: float, double, c10::BFloat16, ...
    return {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half",
            torch.bfloat16: "c10::BFloat16", torch.int64: "long int", torch.int32: "int"}.get(dtype, str(dtype))


def conv2d_output_shape(input, weight, bias, stride, padding, dilation, groups) -> list:
    """Output shape of conv2d, with the checks and messages of csrc/conv_args.cpp in its order."""
    shape, wshape = list(input.shape), list(weight.shape)
    torch._check(len(shape) == 4,
                 lambda: f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {shape}")
    torch._check(len(wshape) == 4,
                 lambda: f"expected stride to be a single integer value or a list of {len(wshape) - 2} values to "
                 f"match the convolution dimensions, but got stride={list(stride)}")
    params = {}
    for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        torch._check(len(v) in (1, 2) or (name == "padding" and len(v) == 4),
                     lambda: f"expected {name} to be a single integer value or a list of 2 values "
                     f"to match the convolution dimensions, but got {name}={list(v)}")
        params[name] = [v[0], v[0]] if len(v) == 1 else list(v)
    (sh, sw), (dh, dw) = params["stride"], params["dilation"]
    pads = params["padding"]
    pt, pb, pl, pr = pads if len(pads) == 4 else (pads[0], pads[0], pads[1], pads[1])
    torch._check(groups > 0, lambda: "non-positive groups is not supported")
    if bias is not None:
        torch._check(bias.dtype == input.dtype,
                     lambda: f"Input type ({_c_name(input.dtype)}) and bias type ({_c_name(bias.dtype)}) should be the same")
    torch._check(min(pt, pb, pl, pr) >= 0, lambda: "negative padding is not supported")
    torch._check(sh > 0 and sw > 0, lambda: "non-positive stride is not supported")
    torch._check(dh > 0 and dw > 0, lambda: f"dilation should be greater than zero, but got {[dh, dw]}")
    OC = wshape[0]
    torch._check(OC >= groups, lambda: f"Given groups={groups}, expected weight to be at least {groups} at "
                 f"dimension 0, but got weight of size {wshape} instead")
    torch._check(OC % groups == 0, lambda: f"Given groups={groups}, expected weight to be divisible by {groups} at "
                 f"dimension 0, but got weight of size [{wshape}] instead")
    torch._check(shape[1] == wshape[1] * groups,
                 lambda: f"Given groups={groups}, weight of size {wshape}, expected input{shape} to have "
                 f"{wshape[1] * groups} channels, but got {shape[1]} channels instead")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == OC,
                     lambda: f"Given weight of size {wshape}, expected bias to be 1-dimensional with {OC} elements, "
                     f"but got bias of size {list(bias.shape)} instead")
    N, _, H, W = shape
    eh, ew = dh * (wshape[2] - 1) + 1, dw * (wshape[3] - 1) + 1
    torch._check(H + pt + pb >= eh and W + pl + pr >= ew,
                 lambda: f"Calculated padded input size per channel: ({H + pt + pb} x {W + pl + pr}). Kernel size: "
                 f"({eh} x {ew}). Kernel size can't be greater than actual input size")
    torch._check(weight.dtype == input.dtype, lambda: f"expected scalar type {_aten_name(input.dtype)} but found {_aten_name(weight.dtype)}")
    return [N, OC, sweep_output_size(H, eh, sh, pt, pb), sweep_output_size(W, ew, sw, pl, pr)]


def conv_memory_format(a: torch.Tensor, b: torch.Tensor) -> torch.memory_format:
    """conv2d's output layout: channels_last when either operand is channels_last (as in ATen)."""
    if torch.channels_last in (memory_format_of(a), memory_format_of(b)):
        return torch.channels_last
    return torch.contiguous_format
