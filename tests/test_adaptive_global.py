import pytest
import torch
import torch.nn.functional as F

import poolops
import poolops.functional as P
from poolops import _reference as ref

from common import FLOAT_DTYPES, LAYOUTS, assert_compiled_matches_eager, assert_same_layout, distinct, needs_cuda, specials

ops = torch.ops.poolops


def ulp_close(a, b, n=2):
    eps = torch.finfo(a.dtype).eps
    assert torch.all((a.double() - b.double()).abs() <= n * eps * b.double().abs() + 1e-30), (a - b).abs().max()


# --- adaptive: windows, values, indices --------------------------------------------------------

def test_adaptive_sweep_vs_torch_and_reference():
    """Spec E.1: (H, W) in 1..9 x 1..6, outputs up to 11 incl. O > I, O = I and O not dividing I."""
    g = torch.Generator().manual_seed(0)
    for H in range(1, 10):
        for W in range(1, 7):
            x = torch.randn(1, 2, H, W, generator=g)
            for OH, OW in [(1, 1), (H, W), (3, 2), (5, 4), (11, 7), (H + 1, max(W - 1, 1))]:
                a = P.adaptive_avg_pool2d(x, (OH, OW))
                assert torch.equal(a, F.adaptive_avg_pool2d(x, (OH, OW))) or OH == OW == 1, (H, W, OH, OW)
                torch.testing.assert_close(a.double(), ref.adaptive_avg_pool2d(x, (OH, OW)), rtol=1e-6, atol=1e-6)
                (m, i), (rm, ri) = P.adaptive_max_pool2d(x, (OH, OW), True), ref.adaptive_max_pool2d(x, (OH, OW))
                tm, ti = F.adaptive_max_pool2d(x, (OH, OW), return_indices=True)
                assert torch.equal(m, tm) and torch.equal(i, ti) and torch.equal(m, rm) and torch.equal(i, ri)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_adaptive_layouts_and_dtypes(layout, dtype):
    x = torch.randn(2, 19, 10, 13).to(dtype).contiguous(memory_format=layout)
    for out in [(7, 7), (4, 5), (3, 1), (13, 17)]:
        a, b = P.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(x, out)
        assert_same_layout(a, b)
        ulp_close(a, b, 2 if dtype in (torch.float32, torch.float64) else 4)
        assert torch.equal(a, P.adaptive_avg_pool2d(x.contiguous(), out))  # CL and NCHW agree exactly
        if dtype in (torch.float16, torch.bfloat16):
            assert torch.equal(a, P.adaptive_avg_pool2d(x.float(), out).to(dtype))
        (m, i), (tm, ti) = P.adaptive_max_pool2d(x, out, True), F.adaptive_max_pool2d(x, out, True)
        assert torch.equal(m, tm) and torch.equal(i, ti)
        assert_same_layout(m, tm)
        assert_same_layout(i, ti)


def test_adaptive_ties_and_nan():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = float("nan")
    (m, i), (tm, ti) = P.adaptive_max_pool2d(x, 3, True), F.adaptive_max_pool2d(x, 3, True)
    assert torch.equal(i, ti) and torch.equal(m.isnan(), tm.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_adaptive_nchw_plane_groups(dtype):
    """NCHW planes of up to 2048 elements (float, half, bfloat16) are pooled eight planes at a time, a lane per
    plane (the last group partly empty), and so is global max pooling: NaN (the last wins), +-0 ties (the first
    wins) and -inf give torch's values, signs and indices; a 50x50 plane and float64 take the per-plane path."""
    for shape, outs in [((3, 7, 14, 14), [(7, 7), (5, 3), (4, 9)]), ((1, 9, 8, 5), [(3, 2), (8, 5)]),
                        ((1, 3, 50, 50), [(7, 7)])]:
        x = specials(shape, shape[-1]).to(dtype)
        for out in outs:
            (m, i), (tm, ti) = P.adaptive_max_pool2d(x, out, True), F.adaptive_max_pool2d(x, out, True)
            assert torch.equal(i, ti), (shape, out)
            assert torch.equal(m.nan_to_num(), tm.nan_to_num()) and torch.equal(m.signbit(), tm.signbit())
            finite = x.nan_to_num(0.0, 0.0, 0.0)
            a, b = P.adaptive_avg_pool2d(finite, out), F.adaptive_avg_pool2d(finite, out)
            assert torch.equal(a, b) if dtype in (torch.float32, torch.float64) else torch.equal(
                a, P.adaptive_avg_pool2d(finite.float(), out).to(dtype)), (shape, out)
        (m, i), (tm, ti) = P.global_max_pool2d(x, True), F.adaptive_max_pool2d(x, 1, True)
        assert torch.equal(i, ti) and torch.equal(m.nan_to_num(), tm.nan_to_num()), shape
        assert torch.equal(m.signbit(), tm.signbit())


def test_output_size_forms():
    x = torch.randn(2, 3, 8, 6)
    for size in [3, (3, 2), (None, 2), (4, None), 0, (0, 3)]:
        assert torch.equal(P.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(x, size))
        assert torch.equal(P.adaptive_max_pool2d(x, size), F.adaptive_max_pool2d(x, size))
    assert P.adaptive_avg_pool2d(x[0], (None, 2)).shape == (3, 8, 2)
    assert P.adaptive_max_pool2d(torch.randn(0, 3, 8, 6), 2).shape == (0, 3, 2, 2)


ERRORS = [
    (P.adaptive_avg_pool2d, (8, 8), 2, r"adaptive_avg_pool2d\(\): Expected 3D or 4D tensor, but got \[8, 8\]"),
    (P.adaptive_max_pool2d, (8, 8), 2, r"adaptive_max_pool2d\(\): Expected 3D or 4D tensor, but got: \[8, 8\]"),
    (P.adaptive_avg_pool2d, (1, 1, 0, 8), 2, r"non-zero size for non-batch dimensions, but input has sizes \[1, 1, 0, 8\] with dimension 2 being empty"),
    (P.adaptive_max_pool2d, (1, 1, 0, 8), 2, r"with dimension 2 being empty"),
    (P.adaptive_avg_pool2d, (2, 3, 8, 8), -1, r"elements of output_size must be greater than or equal to 0 but received \{-1, -1\}"),
    (P.adaptive_max_pool2d, (2, 3, 8, 8), -1, r"Trying to create tensor with negative dimension -1: \[2, 3, -1, -1\]"),
    (P.adaptive_avg_pool2d, (2, 3, 8, 8), (1, 2, 3), "adaptive_avg_pool2d: output_size must be 2"),
    (P.global_avg_pool2d, (8, 8), None, r"global_avg_pool2d\(\): Expected 3D or 4D tensor, but got \[8, 8\]"),
    (P.global_max_pool2d, (2, 0, 3, 3), None, r"dimension 1 being empty"),
]


@pytest.mark.parametrize("fn,shape,size,pattern", ERRORS)
def test_errors(fn, shape, size, pattern):
    x = torch.randn(shape)
    with pytest.raises(RuntimeError, match=pattern):
        fn(x) if size is None else fn(x, size)


# --- adaptive backward -------------------------------------------------------------------------

def test_overlapping_backward_named_case():
    x = torch.randn(1, 1, 1, 5, dtype=torch.float64, requires_grad=True)
    P.adaptive_avg_pool2d(x, (1, 3)).sum().backward()
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([0.5, 5 / 6, 1 / 3, 5 / 6, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_adaptive_backward_vs_torch_and_reference(layout):
    for out in [(3, 4), (7, 7), (11, 2)]:
        base = distinct((2, 3, 9, 7))
        x1 = base.clone().contiguous(memory_format=layout).requires_grad_()
        x2 = base.clone().contiguous(memory_format=layout).requires_grad_()
        g = torch.randn(2, 3, *out, dtype=torch.float64)
        P.adaptive_avg_pool2d(x1, out).backward(g)
        F.adaptive_avg_pool2d(x2, out).backward(g)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(x1.grad, ref.adaptive_avg_pool2d_backward(g, base.shape), rtol=1e-14, atol=1e-15)
        assert_same_layout(x1.grad, x2.grad)
        x1.grad = x2.grad = None
        P.adaptive_max_pool2d(x1, out).backward(g)
        F.adaptive_max_pool2d(x2, out).backward(g)
        assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("out", [(3, 4), (5, 2)])
def test_adaptive_gradcheck_and_gradgradcheck(out):
    x = distinct((2, 3, 5, 7)).requires_grad_()
    for fn in (lambda t: P.adaptive_avg_pool2d(t, out), lambda t: P.adaptive_max_pool2d(t, out)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_adaptive_nhwc_channel_blocks(dtype):
    """Channels-last max pools scan blocks of 32 (float) or 64 (half, bfloat16) channels in vector registers,
    then the rest: NaN (the last wins), +-0 ties (the first wins) and -inf give torch's values, signs and
    indices in every block and in the tail."""
    x = specials((2, 100, 9, 7), 5).to(dtype).contiguous(memory_format=torch.channels_last)
    for out in [(7, 7), (3, 4), (2, 1), None]:
        if out is None:
            (m, i), (tm, ti) = P.global_max_pool2d(x, True), F.adaptive_max_pool2d(x, 1, True)
        else:
            (m, i), (tm, ti) = P.adaptive_max_pool2d(x, out, True), F.adaptive_max_pool2d(x, out, True)
        assert torch.equal(i, ti) and torch.equal(m.isnan(), tm.isnan())
        # A NaN's sign is not compared: torch's channels-last bfloat16 max keeps the input's bits, its NCHW
        # one (and both of ours) gives c10's quiet NaN.
        assert torch.equal(m.nan_to_num(), tm.nan_to_num()) and torch.equal(m.nan_to_num().signbit(), tm.nan_to_num().signbit())


# --- global ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_global_vs_torch(layout, dtype):
    for shape in [(2, 19, 7, 7), (3, 300, 5, 9), (1, 2, 1, 1)]:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=layout)
        a, b = P.global_avg_pool2d(x), F.adaptive_avg_pool2d(x, 1)
        assert_same_layout(a, b)
        tol = {torch.float32: 1e-6, torch.float64: 1e-14}.get(dtype, 1e-2)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        torch.testing.assert_close(a, x.mean((-1, -2), keepdim=True), rtol=tol, atol=tol)
        (m, i), (tm, ti) = P.global_max_pool2d(x, True), F.adaptive_max_pool2d(x, 1, True)
        assert torch.equal(m, tm) and torch.equal(i, ti)
        assert_same_layout(m, tm)
        assert_same_layout(i, ti)
    x = torch.randn(3, 6, 5)
    assert P.global_avg_pool2d(x).shape == (3, 1, 1) and P.global_max_pool2d(x).shape == (3, 1, 1)
    assert P.global_avg_pool2d(torch.randn(0, 3, 4, 4)).shape == (0, 3, 1, 1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_global_backward(layout):
    x = distinct((2, 5, 4, 6)).contiguous(memory_format=layout).requires_grad_()
    g = torch.randn(2, 5, 1, 1, dtype=torch.float64)
    (ga,) = torch.autograd.grad(P.global_avg_pool2d(x), x, g)
    torch.testing.assert_close(ga, (g / 24).expand(2, 5, 4, 6))
    (gm,) = torch.autograd.grad(P.global_max_pool2d(x), x, g)
    (tm,) = torch.autograd.grad(F.adaptive_max_pool2d(x, 1), x, g)
    assert torch.equal(gm, tm)
    assert torch.autograd.gradcheck(P.global_avg_pool2d, (x,)) and torch.autograd.gradgradcheck(P.global_avg_pool2d, (x,))
    assert torch.autograd.gradcheck(P.global_max_pool2d, (x,)) and torch.autograd.gradgradcheck(P.global_max_pool2d, (x,))


# --- registration, compile ---------------------------------------------------------------------

def _opcheck_samples():
    x = torch.randn(2, 3, 9, 8)
    cl = x.contiguous(memory_format=torch.channels_last)
    yield ops.adaptive_avg_pool2d, (x, [4, 3])
    yield ops.adaptive_avg_pool2d, (cl.requires_grad_(), [5, 5])
    yield ops.adaptive_max_pool2d, (x[0].double().requires_grad_(), [4, 3])
    yield ops.adaptive_max_pool2d, (x.contiguous(memory_format=torch.channels_last), [2, 7])
    yield ops.global_avg_pool2d, (x.double().requires_grad_(),)
    yield ops.global_avg_pool2d, (x.contiguous(memory_format=torch.channels_last),)
    yield ops.global_max_pool2d, (x.contiguous(memory_format=torch.channels_last).requires_grad_(),)
    yield ops.global_max_pool2d, (x[0],)
    _, idx = F.adaptive_max_pool2d(x, (4, 3), return_indices=True)
    g = torch.randn(2, 3, 4, 3)
    yield ops._adaptive_avg_pool2d_backward, (g.double().requires_grad_(), list(x.shape))
    yield ops._adaptive_max_pool2d_backward, (g.requires_grad_(), idx, list(x.shape))
    _, gidx = F.adaptive_max_pool2d(x, 1, return_indices=True)
    yield ops._global_avg_pool2d_backward, (torch.randn(2, 3, 1, 1).requires_grad_(), list(x.shape))
    yield ops._global_max_pool2d_backward, (torch.randn(2, 3, 1, 1), gidx, list(x.shape))


@pytest.mark.parametrize("op,args", list(_opcheck_samples()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), poolops.nn.AdaptiveMaxPool2d(5), poolops.nn.AdaptiveAvgPool2d((3, None)),
                              poolops.nn.GlobalMaxPool2d(), poolops.nn.GlobalAvgPool2d(), torch.nn.Flatten())
    x = torch.randn(2, 3, 12, 12)
    assert_compiled_matches_eager(net, x)


def test_module_reprs():
    assert repr(poolops.nn.GlobalMaxPool2d(True)) == "GlobalMaxPool2d(return_indices=True)"
    assert repr(poolops.nn.GlobalAvgPool2d()) == "GlobalAvgPool2d()"
    out, idx = poolops.nn.GlobalMaxPool2d(return_indices=True)(torch.randn(2, 3, 4, 4))
    assert out.shape == idx.shape == (2, 3, 1, 1)


# --- CUDA --------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_torch_cuda_and_cpu(dtype, layout):
    x = torch.randn(2, 19, 13, 11).to(dtype).contiguous(memory_format=layout)
    xc = x.cuda()
    exact = dtype in (torch.float32, torch.float64)
    for out in [(7, 7), (4, 5), (13, 17), (1, 1)]:
        a = P.adaptive_avg_pool2d(xc, out)
        assert_same_layout(a, F.adaptive_avg_pool2d(xc, out))
        assert torch.equal(a.cpu(), P.adaptive_avg_pool2d(x, out))
        torch.testing.assert_close(a, F.adaptive_avg_pool2d(xc, out), rtol=1e-6 if exact else 1e-2, atol=1e-6 if exact else 1e-2)
        (m, i), (tm, ti) = P.adaptive_max_pool2d(xc, out, True), F.adaptive_max_pool2d(xc, out, True)
        assert torch.equal(m, tm) and torch.equal(i, ti)
    torch.testing.assert_close(P.global_avg_pool2d(xc).cpu(), P.global_avg_pool2d(x), rtol=1e-5 if exact else 1e-2, atol=1e-5 if exact else 1e-2)
    (m, i), (tm, ti) = P.global_max_pool2d(xc, True), F.adaptive_max_pool2d(xc, 1, True)
    assert torch.equal(m, tm) and torch.equal(i, ti)
    assert P.global_avg_pool2d(torch.randn(0, 3, 4, 4, device="cuda")).shape == (0, 3, 1, 1)


@needs_cuda
def test_cuda_adaptive_backward_deterministic():
    """torch's CUDA adaptive backward uses atomics and raises in deterministic mode; ours is a gather."""
    x = torch.randn(4, 16, 30, 30, device="cuda", requires_grad=True)
    g = torch.randn(4, 16, 7, 7, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        for fn in (P.adaptive_avg_pool2d, P.adaptive_max_pool2d):
            runs = [torch.autograd.grad(fn(x, 7), x, g)[0] for _ in range(3)]
            assert all(torch.equal(runs[0], r) for r in runs[1:])
        gg = torch.randn(4, 16, 1, 1, device="cuda")
        for fn in (P.global_avg_pool2d, P.global_max_pool2d):
            runs = [torch.autograd.grad(fn(x), x, gg)[0] for _ in range(2)]
            assert torch.equal(runs[0], runs[1])
    finally:
        torch.use_deterministic_algorithms(False)
    ref_grad = torch.autograd.grad(F.adaptive_avg_pool2d(x, 7), x, g)[0]
    torch.testing.assert_close(torch.autograd.grad(P.adaptive_avg_pool2d(x, 7), x, g)[0], ref_grad)
