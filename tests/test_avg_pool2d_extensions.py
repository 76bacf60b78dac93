"""avg_pool2d with dilation and with padding 'same' / [top, bottom, left, right]
(issue 8), against references built from F.pad and F.unfold."""
import pytest
import torch
import torch.nn.functional as F

import poolops.functional as P
import poolops.nn as pnn
from poolops._args import same_padding

from common import LAYOUTS, needs_cuda


def _window_sums(x, k, s, pads, d, value=0.0):
    """Sum of the dilated taps of every window of x (N, C, H, W) padded by pads = [top, bottom, left, right]."""
    N, C = x.shape[:2]
    top, bottom, left, right = pads
    xp = F.pad(x.reshape(N * C, 1, *x.shape[-2:]), [left, right, top, bottom], value=value)
    oh = (xp.shape[-2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (xp.shape[-1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return F.unfold(xp, k, dilation=d, stride=s).sum(1).reshape(N, C, oh, ow)


def reference(x, k, s, pads, d, count_include_pad, divisor_override=None):
    """avg_pool2d in float64: tap sums over zero padding, divided by the override,
    the taps inside the padded input, or the taps on real elements."""
    x = x.double()
    total = _window_sums(x, k, s, pads, d)
    ones = torch.ones_like(x[:1, :1])
    if divisor_override is not None:
        count = torch.tensor(float(divisor_override), dtype=torch.float64)
    else:
        count = _window_sums(ones, k, s, pads, d, value=1.0 if count_include_pad else 0.0)
    return total / count


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


DILATION_CASES = [
    (H, W, k, s, p, d)
    for (H, W) in [(7, 8), (10, 9)]
    for k in range(1, 6)
    for s in (1, 2, 3)
    for d in (1, 2, 3)
    for p in sorted({0, k // 2})
    if H + 2 * p >= d * (k - 1) + 1 and W + 2 * p >= d * (k - 1) + 1
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cip", [True, False])
def test_dilation_sweep_vs_reference(layout, cip):
    g = torch.Generator().manual_seed(0)
    for H, W, k, s, p, d in DILATION_CASES:
        x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
        got = P.avg_pool2d(x, k, s, p, count_include_pad=cip, dilation=d)
        want = reference(x, (k, k), (s, s), [p, p, p, p], (d, d), cip)
        assert got.shape == want.shape, (H, W, k, s, p, d)
        torch.testing.assert_close(got, want, msg=lambda m: f"{(H, W, k, s, p, d, cip)}: {m}")
        assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,s,p,d,div", [((3, 2), (2, 1), (1, 0), (2, 3), None), ((2, 3), 1, (1, 1), (3, 1), 5),
                                         (3, 2, 1, 2, 1), ((4, 5), (3, 2), (2, 2), (1, 2), None)])
def test_dilation_rectangular_and_override(layout, k, s, p, d, div):
    x = torch.randn(2, 5, 11, 12, dtype=torch.float64).contiguous(memory_format=layout)
    for cip in (True, False):
        got = P.avg_pool2d(x, k, s, p, False, cip, div, d)
        pt, pl = _pair(p)
        want = reference(x, _pair(k), _pair(s), [pt, pt, pl, pl], _pair(d), cip, div)
        torch.testing.assert_close(got, want)


def test_dilation_one_is_torch_and_float_matches_double():
    x = torch.randn(2, 4, 13, 9)
    for args in [(3, 2, 1, True), (2, 1, 1, False, False), (3, 3, 1, True, True, 2)]:
        torch.testing.assert_close(P.avg_pool2d(x, *args, dilation=1), F.avg_pool2d(x, *args), rtol=0, atol=0)
    got = P.avg_pool2d(x, 3, 2, 1, dilation=2, count_include_pad=False)
    torch.testing.assert_close(got, reference(x, (3, 3), (2, 2), [1] * 4, (2, 2), False).float())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (1, 2, 10, 9), (3, 5, 6)])
@pytest.mark.parametrize("k,s,d", [(3, 2, 1), (2, 2, 1), (3, 1, 1), ((3, 2), (2, 3), 1), (3, 2, 2), (1, 3, 1)])
def test_same_vs_reference(layout, shape, k, s, d):
    x = torch.randn(shape, dtype=torch.float64)
    if x.dim() == 4:
        x = x.contiguous(memory_format=layout)
    pads = same_padding(x.shape[-2:], list(_pair(k)), list(_pair(s)), list(_pair(d)))
    want = reference(x if x.dim() == 4 else x[None], _pair(k), _pair(s), pads, _pair(d), False)
    for cip in (True, False):
        got = P.avg_pool2d(x, k, s, "same", count_include_pad=cip, dilation=d)
        assert list(got.shape[-2:]) == [-(-x.shape[-2] // _pair(s)[0]), -(-x.shape[-1] // _pair(s)[1])]
        torch.testing.assert_close(got if x.dim() == 4 else got[None], want)
    assert torch.equal(P.avg_pool2d(x, k, s, "valid", dilation=d), P.avg_pool2d(x, k, s, 0, dilation=d))


def test_sided_padding_counts():
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    pads = [0, 2, 1, 0]
    for cip in (True, False):
        got = P.avg_pool2d(x, 3, 2, pads, count_include_pad=cip)
        torch.testing.assert_close(got, reference(x, (3, 3), (2, 2), pads, (1, 1), cip))
    got = P.avg_pool2d(x, 3, 2, pads, divisor_override=2)
    torch.testing.assert_close(got, reference(x, (3, 3), (2, 2), pads, (1, 1), True, 2))


GRAD_CASES = [(3, 2, 1, 2, True, None), ((2, 3), 1, (1, 0), (2, 1), False, None), (3, 2, 1, 2, True, 3),
              (3, 2, [1, 1, 0, 1], 1, False, None), (2, 2, [0, 1, 1, 0], 2, True, None)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,s,p,d,cip,div", GRAD_CASES)
def test_gradcheck_and_gradgradcheck(layout, k, s, p, d, cip, div):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    fn = lambda t: P.avg_pool2d(t, k, s, p, False, cip, div, d)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_same_gradcheck():
    x = torch.randn(1, 2, 7, 8, dtype=torch.float64, requires_grad=True)
    fn = lambda t: P.avg_pool2d(t, 3, 2, "same")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def _opcheck_samples():
    for layout in LAYOUTS:
        x = torch.randn(2, 3, 9, 8, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
        yield (x, [3, 2], [2, 1], [1, 1], False, False, None, [2, 3])
        yield (x, [3], [2], [0, 1, 1, 1], False, False, None, [1])
        yield (x, [2], [2], [1, 0, 0, 1], False, True, 3, [2])


@pytest.mark.parametrize("args", list(_opcheck_samples()))
def test_opcheck(args):
    torch.library.opcheck(torch.ops.poolops.avg_pool2d.default, args)
    x = args[0].detach()
    y = torch.ops.poolops.avg_pool2d(x, *args[1:])
    bargs = (torch.randn_like(y), list(x.shape), *args[1:])
    torch.library.opcheck(torch.ops.poolops._avg_pool2d_backward.default, bargs)


def test_double_backward_is_avg_pool_of_ggi():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    go = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(P.avg_pool2d(x, 3, 2, [1, 0, 0, 1], dilation=(1, 2)), x, go, create_graph=True)
    ggi = torch.randn_like(gx)
    (ggo,) = torch.autograd.grad(gx, go, ggi)
    torch.testing.assert_close(ggo, P.avg_pool2d(ggi, 3, 2, [1, 0, 0, 1], dilation=(1, 2)))


def test_module():
    x = torch.randn(2, 3, 10, 11)
    m = pnn.AvgPool2d(3, 2, 1, count_include_pad=False, dilation=2)
    assert repr(m) == "AvgPool2d(kernel_size=3, stride=2, padding=1, dilation=2)"
    assert repr(pnn.AvgPool2d(3, 2, 1)) == repr(torch.nn.AvgPool2d(3, 2, 1))
    assert m.state_dict() == {}
    assert torch.equal(m(x), P.avg_pool2d(x, 3, 2, 1, False, False, None, 2))
    same = pnn.AvgPool2d(3, 2, "same")
    assert torch.equal(same(x), P.avg_pool2d(x, 3, 2, "same"))
    assert same(x).shape == (2, 3, 5, 6)
    converted = pnn.convert(torch.nn.Sequential(torch.nn.AvgPool2d(2)))
    assert torch.equal(converted(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(kernel_size=3, dilation=0), "dilation should be greater than zero"),
    (dict(kernel_size=3, dilation=[1, 2, 3]), "dilation must be either a single int"),
    (dict(kernel_size=3, padding=[1, 1, 1, 1], ceil_mode=True), "ceil_mode is not supported"),
    (dict(kernel_size=3, padding=[3, 0, 0, 0]), "avg_pool2d: each pad must be smaller than the effective kernel"),
    (dict(kernel_size=3, padding=[1, 1, 1]), "padding must either be"),
    (dict(kernel_size=3, padding="same", ceil_mode=True), "does not take ceil_mode"),
    (dict(kernel_size=3, padding=2, dilation=2), "pad should be smaller than or equal to half of kernel size"),
    (dict(kernel_size=3, padding=3, dilation=2), "pad should be at most half of effective kernel size"),
    (dict(kernel_size=3, dilation=5), "Output size is too small"),
])
def test_errors(kwargs, pattern):
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(RuntimeError, match=pattern):
        P.avg_pool2d(x, **kwargs)
    if kwargs.get("padding") != "same":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(), pytest.raises(RuntimeError, match=pattern):
            P.avg_pool2d(torch.empty(1, 2, 6, 6), **kwargs)


@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_cpu(layout):
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64).contiguous(memory_format=layout)
    for args in [(3, 2, 1, False, True, None, 2), ((3, 2), 1, (1, 0), False, False, None, (2, 3)),
                 (3, 2, [0, 1, 1, 0], False, False, 4, 1), (3, 2, "same", False, True, None, 2)]:
        xc = x.cuda().requires_grad_()
        xh = x.clone().requires_grad_()
        yc, yh = P.avg_pool2d(xc, *args), P.avg_pool2d(xh, *args)
        torch.testing.assert_close(yc.cpu(), yh)
        g = torch.randn_like(yh)
        (gc,) = torch.autograd.grad(yc, xc, g.cuda())
        (gh,) = torch.autograd.grad(yh, xh, g)
        torch.testing.assert_close(gc.cpu(), gh)
