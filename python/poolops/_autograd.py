"""Autograd for the poolops backward ops, which only a double backward reaches.
The forward ops' autograd is in C++ (csrc/autograd.cpp): each backward is
itself a custom op, so double backward and torch.compile work."""
import torch

from ._args import top_left_padding

_ops = torch.ops.poolops


def _gather_at_indices(t: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """t[..., indices] per plane: the max pool of t with the given argmax.
    Index -1 (a window with no input element) gathers 0."""
    safe = indices.clamp_min(0).flatten(-2)
    picked = t.flatten(-2).gather(-1, safe).reshape(indices.shape)
    return torch.where(indices >= 0, picked, torch.zeros((), dtype=t.dtype, device=t.device))


def _taps_to_indices(taps, input_size, kernel_size, stride, padding, dilation):
    """Flat indices h * W + w of one-byte taps (th * kw + tw); tap 255 is -1."""
    def pick(v, i):
        return v[0] if len(v) == 1 else v[i]

    kw = pick(kernel_size, 1)
    sh, sw = (pick(kernel_size, 0), kw) if len(stride) == 0 else (pick(stride, 0), pick(stride, 1))
    top, left = top_left_padding(padding)
    oh = torch.arange(taps.shape[-2], device=taps.device).view(-1, 1)
    ow = torch.arange(taps.shape[-1], device=taps.device)
    t = taps.long()
    h = oh * sh - top + (t // kw) * pick(dilation, 0)
    w = ow * sw - left + (t % kw) * pick(dilation, 1)
    return torch.where(taps == 255, -1, h * input_size[-1] + w)


# The backward is linear in grad_output; its own gradient gathers at the argmax.
def _mp_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.geometry = inputs[2:7]  # input_size, kernel_size, stride, padding, dilation


def _mp_bwd_backward(ctx, grad_grad_input):
    (indices,) = ctx.saved_tensors
    if indices.dtype == torch.uint8:
        indices = _taps_to_indices(indices, *ctx.geometry)
    return (_gather_at_indices(grad_grad_input, indices),) + (None,) * 7


torch.library.register_autograd("poolops::_max_pool2d_backward", _mp_bwd_backward, setup_context=_mp_bwd_setup)


def _ap_bwd_setup(ctx, inputs, output):
    ctx.params = inputs[2:]


def _ap_bwd_backward(ctx, grad_grad_input):
    return (_ops.avg_pool2d(grad_grad_input, *ctx.params),) + (None,) * (len(ctx.params) + 1)


torch.library.register_autograd("poolops::_avg_pool2d_backward", _ap_bwd_backward, setup_context=_ap_bwd_setup)


def _aap_bwd_setup(ctx, inputs, output):
    ctx.output_size = list(inputs[0].shape[-2:])


def _aap_bwd_backward(ctx, grad_grad_input):
    return _ops.adaptive_avg_pool2d(grad_grad_input, ctx.output_size), None


torch.library.register_autograd("poolops::_adaptive_avg_pool2d_backward", _aap_bwd_backward,
                                setup_context=_aap_bwd_setup)


def _gap_bwd_backward(ctx, grad_grad_input):
    return _ops.global_avg_pool2d(grad_grad_input), None


torch.library.register_autograd("poolops::_global_avg_pool2d_backward", _gap_bwd_backward,
                                setup_context=lambda ctx, inputs, output: None)


def _argmax_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _argmax_bwd_backward(ctx, grad_grad_input):
    (indices,) = ctx.saved_tensors
    return _gather_at_indices(grad_grad_input, indices), None, None


for _op in ("_adaptive_max_pool2d_backward", "_global_max_pool2d_backward"):
    torch.library.register_autograd(f"poolops::{_op}", _argmax_bwd_backward, setup_context=_argmax_bwd_setup)


# Both conv backward ops are bilinear in their two tensor inputs: save those two
# and the conv parameters (everything after the size argument).
def _conv_bwd_setup(ctx, inputs, output):
    first, second, _size, *params = inputs
    ctx.save_for_backward(first, second)
    ctx.params = params


# grad_input = B(grad_out, weight): its derivative in grad_out is the forward
# conv of the incoming gradient, in weight the weight-gradient op.


def _conv_bwd_input_backward(ctx, gg):
    grad_out, weight = ctx.saved_tensors
    need_go, need_w = ctx.needs_input_grad[:2]
    d_go = _ops.conv2d(gg, weight, None, *ctx.params) if need_go else None
    d_w = _ops._conv2d_backward_weight(grad_out, gg, weight.shape, *ctx.params) if need_w else None
    return d_go, d_w, None, None, None, None, None


torch.library.register_autograd("poolops::_conv2d_backward_input", _conv_bwd_input_backward,
                                setup_context=_conv_bwd_setup)


# grad_weight = C(grad_out, input) likewise.
def _conv_bwd_weight_backward(ctx, gg):
    grad_out, x = ctx.saved_tensors
    need_go, need_x = ctx.needs_input_grad[:2]
    d_go = _ops.conv2d(x, gg, None, *ctx.params) if need_go else None
    d_x = _ops._conv2d_backward_input(grad_out, gg, x.shape, *ctx.params) if need_x else None
    return d_go, d_x, None, None, None, None, None


torch.library.register_autograd("poolops::_conv2d_backward_weight", _conv_bwd_weight_backward,
                                setup_context=_conv_bwd_setup)
