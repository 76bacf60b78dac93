"""padding='same' (TensorFlow's, any stride) for max_pool2d and conv2d, and the
ops' 4-element padding [top, bottom, left, right] it lowers to. References pad
explicitly with F.pad and run torch's op with padding 0 (timm's approach)."""
import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import poolops
import poolops.functional as P
import poolops.nn as pnn
from common import LAYOUTS, assert_compiled_matches_eager, distinct, needs_cuda

ops = torch.ops.poolops

SIZES = [(7, 8), (8, 7), (5, 5), (6, 6)]


def tf_pads(size, k, s, d=1):
    """[top, bottom, left, right] of TensorFlow's 'same', written out independently of poolops."""
    pads = []
    for n in size:
        out = math.ceil(n / s)
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def padded(x, pads, value=0.0):
    t, b, l, r = pads
    return F.pad(x, [l, r, t, b], value=value)


def max_reference(x, k, s, d=1):
    """Values and indices into the unpadded plane, via F.pad with -inf."""
    pads = tf_pads(x.shape[-2:], k, s, d)
    y, idx = F.max_pool2d(padded(x, pads, -math.inf), k, s, 0, d, return_indices=True)
    wp = x.shape[-1] + pads[2] + pads[3]
    h, w = idx // wp - pads[0], idx % wp - pads[2]
    return y, h * x.shape[-1] + w


# --- max_pool2d ---------------------------------------------------------------------------------

def test_max_pool2d_same_matches_padded_reference():
    for (H, W), s, k, layout in itertools.product(SIZES, (1, 2, 3), range(1, 6), LAYOUTS):
        for dtype in (torch.float32, torch.float64):
            x = distinct((2, 3, H, W), dtype, seed=H * 31 + k).contiguous(memory_format=layout)
            ref, ref_idx = max_reference(x, k, s)
            y, idx = P.max_pool2d(x, k, s, "same", return_indices=True)
            assert y.shape[-2:] == (math.ceil(H / s), math.ceil(W / s))
            assert torch.equal(y, ref) and torch.equal(idx, ref_idx), (H, W, s, k, layout)
            assert torch.equal(P.max_pool2d(x, k, s, "same"), ref)
            # Gradients: the one-byte taps path, the indices path, and the reference.
            g = torch.randn_like(ref)
            grads = []
            for return_indices in (False, True):
                xa = x.clone().requires_grad_()
                out = P.max_pool2d(xa, k, s, "same", return_indices=return_indices)
                (out[0] if return_indices else out).backward(g)
                grads.append(xa.grad)
            xr = x.clone().requires_grad_()
            max_reference(xr, k, s)[0].backward(g)
            assert torch.equal(grads[0], xr.grad) and torch.equal(grads[1], xr.grad), (H, W, s, k, layout)
            assert grads[0].stride() == xr.grad.stride()


def test_max_pool2d_same_dilation_unbatched_and_rectangular():
    x = distinct((3, 11, 10))
    for k, s, d in [(3, 2, 2), (2, 3, 3), ((3, 2), (2, 1), 1)]:
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (s, s) if isinstance(s, int) else s
        pads = tf_pads((11,), kh, sh, d)[:2] + tf_pads((10,), kw, sw, d)[:2]
        ref = F.max_pool2d(padded(x, pads, -math.inf), k, s, 0, d)
        assert torch.equal(P.max_pool2d(x, k, s, "same", d), ref)
    assert torch.equal(P.max_pool2d(x, 3, None, "same"), P.max_pool2d(x, 3, 3, "same"))
    assert torch.equal(P.max_pool2d(x, 3, 2, "valid"), F.max_pool2d(x, 3, 2))


def test_max_pool2d_stride1_same_is_symmetric_for_odd_kernels():
    x = torch.randn(2, 3, 9, 8)
    assert torch.equal(P.max_pool2d(x, 3, 1, "same"), F.max_pool2d(x, 3, 1, 1))


def test_max_pool2d_gradcheck():
    for k, s, layout in [(3, 2, torch.contiguous_format), (2, 2, torch.channels_last), (4, 3, torch.contiguous_format)]:
        x = distinct((1, 2, 7, 8)).contiguous(memory_format=layout).requires_grad_()
        f = lambda t: P.max_pool2d(t, k, s, "same")  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_opcheck_sided_padding(layout):
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=layout).requires_grad_()
    for op in (ops.max_pool2d_with_indices, ops.max_pool2d_with_taps, ops.max_pool2d):
        torch.library.opcheck(op, (x, [3], [2], [0, 1, 1, 0], [1], False))
    _, taps = ops.max_pool2d_with_taps(x.detach(), [3], [2], [1, 1, 0, 1], [1], False)
    g = torch.randn(taps.shape).contiguous(memory_format=layout).requires_grad_()
    torch.library.opcheck(ops._max_pool2d_backward, (g, taps, list(x.shape), [3], [2], [1, 1, 0, 1], [1], False))


MAX_ERRORS = [
    (dict(padding=[0, 1, 1, 1], ceil_mode=True), "ceil_mode is not supported with padding"),
    (dict(padding=[0, -1, 1, 1]), "pad must be non-negative, but got pad: -1"),
    (dict(padding=[0, 3, 1, 1]), "each pad must be smaller than the effective kernel size, but got pad=3"),
    (dict(padding=[0, 1, 1, 1, 1]), "padding must either be a single int, or a tuple of two ints"),
]


@pytest.mark.parametrize("kwargs,pattern", MAX_ERRORS)
def test_max_pool2d_sided_padding_errors(kwargs, pattern):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match=pattern):
        P.max_pool2d(x, 3, 2, **kwargs)
    with FakeTensorMode(), pytest.raises(RuntimeError, match=pattern):
        P.max_pool2d(torch.randn(1, 2, 8, 8), 3, 2, **kwargs)


def test_max_pool2d_same_errors():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match="padding='same' does not take ceil_mode"):
        P.max_pool2d(x, 3, 2, "same", ceil_mode=True)
    with pytest.raises(TypeError, match="argument 'padding' must be an int or a tuple of ints"):
        P.max_pool2d(x, 3, 2, "full")
    with pytest.raises(RuntimeError, match="stride should be greater than zero"):
        P.max_pool2d(x, 3, -1, "same")


def test_sided_padding_allows_pads_over_half_the_kernel():
    """The 4-element form only needs a real element in every window, not torch's pad <= k/2."""
    x = distinct((1, 2, 6, 7))
    pads = [2, 0, 0, 2]
    ref = F.max_pool2d(padded(x, pads, -math.inf), 3, 2)
    assert torch.equal(ops.max_pool2d(x, [3], [2], pads, [1], False), ref)


# --- conv2d -------------------------------------------------------------------------------------

def conv_reference(x, w, b, s, d=1, groups=1):
    pads = tf_pads(x.shape[-2:], w.shape[-2], s, d)[:2] + tf_pads(x.shape[-2:], w.shape[-1], s, d)[2:]
    return F.conv2d(padded(x, pads), w, b, s, 0, d, groups)


def conv_reference_hw(x, w, stride):
    (sh, sw), (kh, kw) = stride, w.shape[-2:]
    pads = tf_pads(x.shape[-2:-1], kh, sh) + tf_pads(x.shape[-1:], kw, sw)
    return F.conv2d(padded(x, pads), w, None, stride)


def test_conv2d_same_matches_padded_reference():
    torch.manual_seed(0)
    for (H, W), s, k, layout in itertools.product(SIZES, (1, 2, 3), range(1, 6), LAYOUTS):
        for oc, groups in [(5, 1), (4, 4), (8, 4)]:  # dense, depthwise, depthwise with multiplier 2
            x = torch.randn(2, 4, H, W, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
            w = torch.randn(oc, 4 // groups, k, k, dtype=torch.float64).requires_grad_()
            b = torch.randn(oc, dtype=torch.float64).requires_grad_()
            y = P.conv2d(x, w, b, s, "same", 1, groups)
            ref = conv_reference(x, w, b, s, 1, groups)
            assert y.shape[-2:] == (math.ceil(H / s), math.ceil(W / s))
            torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
            g = torch.randn_like(ref)
            got = torch.autograd.grad(y, (x, w, b), g)
            want = torch.autograd.grad(ref, (x, w, b), g)
            for a, e in zip(got, want):
                torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)


def test_conv2d_same_dilation_rectangular_unbatched():
    x, w = torch.randn(4, 11, 10, dtype=torch.float64), torch.randn(6, 4, 3, 2, dtype=torch.float64)
    for s, d in [(2, 2), ((2, 3), (1, 2)), (3, 1)]:
        sh, sw = (s, s) if isinstance(s, int) else s
        dh, dw = (d, d) if isinstance(d, int) else d
        pads = tf_pads((11,), 3, sh, dh)[:2] + tf_pads((10,), 2, sw, dw)[:2]
        ref = F.conv2d(padded(x, pads), w, None, s, 0, d)
        torch.testing.assert_close(P.conv2d(x, w, None, s, "same", d), ref, rtol=1e-12, atol=1e-12)


def test_conv2d_stride1_same_is_unchanged():
    """Stride 1: torch's 'same'; an odd total is padded in the kernel, bit for bit what the
    explicit extra row/column on the right/bottom plus symmetric padding gives."""
    torch.manual_seed(0)
    for k, d, groups, layout in itertools.product((2, 3, 4), (1, 2), (1, 4), LAYOUTS):
        x = torch.randn(2, 4, 9, 10).contiguous(memory_format=layout)
        w = torch.randn(4, 4 // groups, k, k)
        total = d * (k - 1)
        extra = F.pad(x, [0, total % 2, 0, total % 2])
        want = P.conv2d(extra, w, None, 1, total // 2, d, groups)
        assert torch.equal(P.conv2d(x, w, None, 1, "same", d, groups), want)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's zero-padded-copy warning
            torch.testing.assert_close(P.conv2d(x, w, None, 1, "same", d, groups),
                                       F.conv2d(x, w, None, 1, "same", d, groups))


def test_strided_same_is_accepted_where_torch_raises():
    x, w = torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3)
    with pytest.raises(RuntimeError, match="padding='same' is not supported for strided convolutions"):
        F.conv2d(x, w, stride=(1, 2), padding="same")
    torch.testing.assert_close(P.conv2d(x, w, stride=(1, 2), padding="same"), conv_reference_hw(x, w, (1, 2)))
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        torch.nn.Conv2d(4, 4, 3, stride=2, padding="same")
    assert pnn.Conv2d(4, 4, 3, stride=(1, 2), padding="same").stride == (1, 2)


def test_conv2d_gradcheck():
    torch.manual_seed(0)
    for oc, groups, layout in [(3, 1, torch.contiguous_format), (2, 2, torch.channels_last), (4, 2, torch.contiguous_format)]:
        x = torch.randn(1, 2, 6, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
        w = torch.randn(oc, 2 // groups, 3, 2, dtype=torch.float64).requires_grad_()
        f = lambda a, ww: P.conv2d(a, ww, None, 2, "same", 1, groups)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w))
        assert torch.autograd.gradgradcheck(f, (x, w))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_opcheck_sided_padding(layout):
    x = torch.randn(2, 4, 9, 8).contiguous(memory_format=layout).requires_grad_()
    torch.library.opcheck(ops.conv2d, (x, torch.randn(6, 2, 3, 3).requires_grad_(), None, [2, 2], [0, 1, 1, 0], [1, 1], 2))
    torch.library.opcheck(ops.conv2d, (x, torch.randn(4, 1, 3, 3).requires_grad_(), torch.randn(4), [2, 2], [1, 1, 0, 1],
                                       [1, 1], 4))


def test_conv2d_sided_padding_1x1_is_not_a_view():
    x, w = torch.randn(1, 3, 4, 5), torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(ops.conv2d(x, w, None, [1, 1], [0, 1, 0, 2], [1, 1], 1),
                               F.conv2d(F.pad(x, [0, 2, 0, 1]), w))


def test_conv2d_sided_padding_errors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for fake in (False, True):
        with FakeTensorMode() if fake else torch.no_grad():
            x, w = torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3)
            with pytest.raises(RuntimeError, match="negative padding is not supported"):
                ops.conv2d(x, w, None, [1, 1], [0, 0, -1, 0], [1, 1], 1)
            with pytest.raises(RuntimeError, match=r"Calculated padded input size per channel: \(3 x 2\)"):
                ops.conv2d(torch.randn(1, 4, 2, 2), w, None, [1, 1], [1, 0, 0, 0], [1, 1], 1)
            with pytest.raises(RuntimeError, match="expected padding to be a single integer value or a list of 2"):
                ops.conv2d(x, w, None, [1, 1], [0, 0, 1], [1, 1], 1)


# --- modules, compile ---------------------------------------------------------------------------

def test_modules_take_same_at_any_stride():
    torch.manual_seed(0)
    conv = pnn.Conv2d(4, 6, 3, stride=2, padding="same")
    tconv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    assert conv.stride == (2, 2) and conv.padding == "same"
    assert list(conv.state_dict()) == list(tconv.state_dict())
    assert repr(conv) == repr(tconv).replace("padding=(1, 1)", "padding=same")
    x = torch.randn(2, 4, 9, 8)
    torch.testing.assert_close(conv(x), conv_reference(x, conv.weight, conv.bias, 2))
    reflect = pnn.Conv2d(4, 4, 3, stride=2, padding="same", groups=4, padding_mode="reflect")
    pads = tf_pads(x.shape[-2:], 3, 2)
    ref = F.conv2d(F.pad(x, [pads[2], pads[3], pads[0], pads[1]], mode="reflect"), reflect.weight, reflect.bias, 2,
                   groups=4)
    torch.testing.assert_close(reflect(x), ref)
    pool = pnn.MaxPool2d(3, 2, padding="same")
    assert torch.equal(pool(x), max_reference(x, 3, 2)[0])
    # Stride 1 is torch's own 'same', reflect padding included.
    c1 = pnn.Conv2d(4, 4, 4, padding="same", padding_mode="reflect")
    t1 = torch.nn.Conv2d(4, 4, 4, padding="same", padding_mode="reflect")
    t1.load_state_dict(c1.state_dict())
    assert repr(c1) == repr(t1)
    torch.testing.assert_close(c1(x), t1(x))


def test_compile_fullgraph_same():
    torch.manual_seed(0)
    net = torch.nn.Sequential(pnn.Conv2d(3, 8, 3, stride=2, padding="same"), torch.nn.ReLU(),
                              pnn.MaxPool2d(3, 2, padding="same"),
                              pnn.Conv2d(8, 8, 3, stride=2, padding="same", groups=8))
    x = torch.randn(2, 3, 15, 16)
    assert_compiled_matches_eager(net, x)


# --- CUDA ---------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_same_matches_cpu(layout):
    for (H, W), s, k in itertools.product(SIZES, (1, 2, 3), (1, 2, 3, 5)):
        x = distinct((2, 3, H, W), torch.float32, seed=k).contiguous(memory_format=layout)
        xc = x.cuda().requires_grad_()
        y, idx = P.max_pool2d(xc, k, s, "same", return_indices=True)
        ref, ref_idx = max_reference(x, k, s)
        assert torch.equal(y.cpu(), ref) and torch.equal(idx.cpu(), ref_idx)
        g = torch.randn_like(ref)
        xt = xc.detach().clone().requires_grad_()
        P.max_pool2d(xt, k, s, "same").backward(g.cuda())
        xr = x.clone().requires_grad_()
        max_reference(xr, k, s)[0].backward(g)
        assert torch.equal(xt.grad.cpu(), xr.grad)
        for oc, groups in [(5, 1), (3, 3), (6, 3)]:
            w = torch.randn(oc, 3 // groups, k, k, dtype=torch.float64)
            x64 = x.double().requires_grad_()
            xg = x64.detach().cuda().requires_grad_()
            yc = P.conv2d(xg, w.cuda(), None, s, "same", 1, groups)
            yr = conv_reference(x64, w, None, s, 1, groups)
            torch.testing.assert_close(yc.cpu(), yr)
            gc = torch.randn_like(yr)
            (gx,) = torch.autograd.grad(yc, xg, gc.cuda())
            (gr,) = torch.autograd.grad(yr, x64, gc)
            torch.testing.assert_close(gx.cpu(), gr)
