"""Autograd for the poolops ops. Each backward is itself a custom op (or plain
torch ops), so double backward and torch.compile work."""
import torch

from ._args import top_left_padding

_ops = torch.ops.poolops


def _below_autograd(op, *args):
    """op(*args). A first-order backward records no graph: its backward ops then
    skip their own (Python) autograd layer, as a native backward would."""
    if torch.is_grad_enabled():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _gather_at_indices(t: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """t[..., indices] per plane: the max pool of t with the given argmax.
    Index -1 (a window with no input element) gathers 0."""
    safe = indices.clamp_min(0).flatten(-2)
    picked = t.flatten(-2).gather(-1, safe).reshape(indices.shape)
    return torch.where(indices >= 0, picked, torch.zeros((), dtype=t.dtype, device=t.device))


# max_pool2d_with_indices: the gradient goes to each window's argmax.
def _no_zero_grads(ctx):
    """The index output gets no gradient; left materialized, autograd would
    fill one with zeros, as large as the indices, on every backward. The
    backward then gets None for an output that took no gradient."""
    ctx.set_materialize_grads(False)


def _mp_setup(ctx, inputs, output):
    _no_zero_grads(ctx)
    x, *params = inputs
    ctx.save_for_backward(output[1])
    ctx.input_size = x.shape
    ctx.params = params


def _mp_backward(ctx, grad_out, _grad_indices):
    if grad_out is None:
        return (None,) * 6
    (indices,) = ctx.saved_tensors
    grad = _below_autograd(_ops._max_pool2d_backward.default, grad_out, indices, ctx.input_size, *ctx.params)
    return grad, None, None, None, None, None


# max_pool2d_with_taps stores one byte per output (the argmax's tap); the same backward op takes it.
for _op in ("max_pool2d_with_indices", "max_pool2d_with_taps"):
    torch.library.register_autograd(f"poolops::{_op}", _mp_backward, setup_context=_mp_setup)


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


# max_pool2d without indices (inference path): the backward recomputes them.
def _mp_values_setup(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)
    ctx.params = params


def _mp_values_backward(ctx, grad_out):
    (x,) = ctx.saved_tensors
    with torch.no_grad():
        _, indices = _ops.max_pool2d_with_indices(x, *ctx.params)
    grad = _below_autograd(_ops._max_pool2d_backward.default, grad_out, indices, x.shape, *ctx.params)
    return grad, None, None, None, None, None


torch.library.register_autograd("poolops::max_pool2d", _mp_values_backward, setup_context=_mp_values_setup)


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


# avg_pool2d: linear in its input; the backward is linear in grad_output and
# its own gradient is the forward op again.
def _ap_setup(ctx, inputs, output):
    x, *params = inputs
    ctx.input_size = x.shape
    ctx.params = params


def _ap_backward(ctx, grad_out):
    grad = _below_autograd(_ops._avg_pool2d_backward.default, grad_out, ctx.input_size, *ctx.params)
    return (grad,) + (None,) * len(ctx.params)


torch.library.register_autograd("poolops::avg_pool2d", _ap_backward, setup_context=_ap_setup)


def _ap_bwd_setup(ctx, inputs, output):
    ctx.params = inputs[2:]


def _ap_bwd_backward(ctx, grad_grad_input):
    return (_ops.avg_pool2d(grad_grad_input, *ctx.params),) + (None,) * (len(ctx.params) + 1)


torch.library.register_autograd("poolops::_avg_pool2d_backward", _ap_bwd_backward, setup_context=_ap_bwd_setup)


# adaptive_avg_pool2d and global_avg_pool2d: the same linear pattern.
def _aap_setup(ctx, inputs, output):
    ctx.input_size = inputs[0].shape


def _aap_backward(ctx, grad_out):
    return _below_autograd(_ops._adaptive_avg_pool2d_backward.default, grad_out, ctx.input_size), None


torch.library.register_autograd("poolops::adaptive_avg_pool2d", _aap_backward, setup_context=_aap_setup)


def _aap_bwd_setup(ctx, inputs, output):
    ctx.output_size = list(inputs[0].shape[-2:])


def _aap_bwd_backward(ctx, grad_grad_input):
    return _ops.adaptive_avg_pool2d(grad_grad_input, ctx.output_size), None


torch.library.register_autograd("poolops::_adaptive_avg_pool2d_backward", _aap_bwd_backward,
                                setup_context=_aap_bwd_setup)


def _gap_backward(ctx, grad_out):
    return _below_autograd(_ops._global_avg_pool2d_backward.default, grad_out, ctx.input_size)


torch.library.register_autograd("poolops::global_avg_pool2d", _gap_backward, setup_context=_aap_setup)


def _gap_bwd_backward(ctx, grad_grad_input):
    return _ops.global_avg_pool2d(grad_grad_input), None


torch.library.register_autograd("poolops::_global_avg_pool2d_backward", _gap_bwd_backward,
                                setup_context=lambda ctx, inputs, output: None)


# adaptive_max_pool2d and global_max_pool2d: the gradient goes to the argmax,
# and the backward's own gradient gathers there.
def _amp_setup(ctx, inputs, output):
    _no_zero_grads(ctx)
    ctx.save_for_backward(output[1])
    ctx.input_size = inputs[0].shape


def _amp_backward(ctx, grad_out, _grad_indices):
    if grad_out is None:
        return None, None
    (indices,) = ctx.saved_tensors
    return _below_autograd(_ops._adaptive_max_pool2d_backward.default, grad_out, indices, ctx.input_size), None


torch.library.register_autograd("poolops::adaptive_max_pool2d", _amp_backward, setup_context=_amp_setup)


def _gmp_backward(ctx, grad_out, _grad_indices):
    if grad_out is None:
        return None
    (indices,) = ctx.saved_tensors
    return _below_autograd(_ops._global_max_pool2d_backward.default, grad_out, indices, ctx.input_size)


torch.library.register_autograd("poolops::global_max_pool2d", _gmp_backward, setup_context=_amp_setup)


def _argmax_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _argmax_bwd_backward(ctx, grad_grad_input):
    (indices,) = ctx.saved_tensors
    return _gather_at_indices(grad_grad_input, indices), None, None


for _op in ("_adaptive_max_pool2d_backward", "_global_max_pool2d_backward"):
    torch.library.register_autograd(f"poolops::{_op}", _argmax_bwd_backward, setup_context=_argmax_bwd_setup)


# conv2d: grad_input and grad_weight are the two backward ops, grad_bias a sum.
def _conv_setup(ctx, inputs, output):
    x, weight, bias, *params = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.params = params


def _conv_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx = gw = None
    if need_x:
        gx = _below_autograd(_ops._conv2d_backward_input.default, grad_out, weight, x.shape, *ctx.params)
    if need_w:
        gw = _below_autograd(_ops._conv2d_backward_weight.default, grad_out, x, weight.shape, *ctx.params)
    gb = grad_out.sum((0, 2, 3)) if ctx.has_bias and need_b else None
    return gx, gw, gb, None, None, None, None


torch.library.register_autograd("poolops::conv2d", _conv_backward, setup_context=_conv_setup)


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
