"""Property-based parity with torch (hypothesis): random shapes, hyper-parameters,
dtypes, memory formats and strides; values, indices, gradients and whether an
error is raised must all agree. Derandomised by default (CI); set
POOLOPS_HYPOTHESIS_EXAMPLES=2000 to try many more examples."""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import poolops.functional as P

EXAMPLES = int(os.environ.get("POOLOPS_HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize="POOLOPS_HYPOTHESIS_EXAMPLES" not in os.environ,
                    deadline=None, suppress_health_check=list(HealthCheck), database=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def inputs(draw, min_hw=1, max_hw=12):
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 10))
    h = draw(st.integers(min_hw, max_hw))
    w = draw(st.integers(min_hw, max_hw))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed", "sliced", "unbatched"]))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "sliced":
        x = torch.cat([x, x], dim=1)[:, ::2]
    elif layout == "unbatched":
        x = x[0] if n > 0 else x.sum(0)
    return x


def pair(draw, lo, hi):
    a = draw(st.integers(lo, hi))
    return draw(st.sampled_from([a, (a, draw(st.integers(lo, hi)))]))


def outcome(fn):
    try:
        return fn(), None
    except (RuntimeError, IndexError, ValueError, TypeError) as e:
        return None, type(e)


def assert_same(mine, theirs, exact):
    (a, ea), (b, eb) = mine, theirs
    assert ea == eb, (ea, eb)
    if ea is not None:
        return
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for u, v in zip(a, b):
        assert u.shape == v.shape and u.dtype == v.dtype
        if u.numel() == 0:
            continue
        if exact or not u.is_floating_point():
            assert torch.equal(u, v) or (torch.equal(u.isnan(), v.isnan()) and torch.equal(u.nan_to_num(), v.nan_to_num()))
        else:
            tol = 1e-2 if u.dtype in (torch.float16, torch.bfloat16) else 1e-5
            torch.testing.assert_close(u, v, rtol=tol, atol=tol)


def check_grad(fn_mine, fn_theirs, x, exact):
    if x.numel() == 0:
        return
    # distinct values, so the argmax is unique and the gradients comparable
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(x.numel()))
    xd = (perm.double().reshape(x.shape) / x.numel()).to(x.dtype)
    reduced = x.dtype in (torch.float16, torch.bfloat16)
    a = xd.clone().requires_grad_()
    # poolops accumulates half/bfloat16 gradients in float and rounds once: compare
    # with torch's float32 gradient rounded (torch's CPU kernel sums in half/bf16).
    b = (xd.float() if reduced else xd).clone().requires_grad_()
    ya, yb = fn_mine(a), fn_theirs(b)
    ya, yb = (ya[0] if isinstance(ya, tuple) else ya), (yb[0] if isinstance(yb, tuple) else yb)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(7)).to(ya.dtype)
    (ga,), (gb,) = torch.autograd.grad(ya, a, g), torch.autograd.grad(yb, b, g.to(yb.dtype))
    gb = gb.to(ga.dtype)
    if exact and x.dtype in (torch.float32, torch.float64):
        assert torch.equal(ga, gb)
    else:
        tol = 2e-2 if reduced else 1e-5
        torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


@SETTINGS
@given(x=inputs(), data=st.data())
def test_max_pool2d_property(x, data):
    k = pair(data.draw, 1, 5)
    s = data.draw(st.sampled_from([None, 1, 2, 3, (1, 2)]))
    p = pair(data.draw, 0, 2)
    d = pair(data.draw, 1, 3)
    ceil = data.draw(st.booleans())
    args = (k, s, p, d, ceil)
    mine = outcome(lambda: P.max_pool2d(x, *args, return_indices=True))
    theirs = outcome(lambda: F.max_pool2d(x, *args, return_indices=True))
    if mine[1] is None and theirs[1] is None:
        # A window wholly in padding (pytorch#114216): both give -inf; poolops' index is
        # -1, torch's points at some other element (outside the plane, or wrapped into
        # the next row). Compare the indices everywhere else.
        empty = mine[0][1] == -1
        assert (theirs[0][0][empty] == float("-inf")).all()
        theirs = ((theirs[0][0], torch.where(empty, -1, theirs[0][1])), None)
    assert_same(mine, theirs, exact=True)
    if mine[1] is None and not (mine[0][1] == -1).any():  # torch's backward misroutes empty windows
        check_grad(lambda t: P.max_pool2d(t, *args), lambda t: F.max_pool2d(t, *args), x, exact=True)


@SETTINGS
@given(x=inputs(), data=st.data())
def test_avg_pool2d_property(x, data):
    k = pair(data.draw, 1, 5)
    s = data.draw(st.sampled_from([None, 1, 2, 3, (2, 1)]))
    p = pair(data.draw, 0, 2)
    ceil, cip = data.draw(st.booleans()), data.draw(st.booleans())
    div = data.draw(st.sampled_from([None, None, 1, 3, -2]))
    args = (k, s, p, ceil, cip, div)
    mine, theirs = outcome(lambda: P.avg_pool2d(x, *args)), outcome(lambda: F.avg_pool2d(x, *args))
    assert_same(mine, theirs, exact=x.dtype in (torch.float32, torch.float64) and x.is_contiguous())
    if mine[1] is None:
        check_grad(lambda t: P.avg_pool2d(t, *args), lambda t: F.avg_pool2d(t, *args), x, exact=False)


@SETTINGS
@given(x=inputs(), data=st.data())
def test_adaptive_pool2d_property(x, data):
    size = data.draw(st.sampled_from([1, 2, 3, 7, (None, 2), (4, None), (5, 3), (13, 1)]))
    mine, theirs = outcome(lambda: P.adaptive_avg_pool2d(x, size)), outcome(lambda: F.adaptive_avg_pool2d(x, size))
    assert_same(mine, theirs, exact=False)
    mine = outcome(lambda: P.adaptive_max_pool2d(x, size, True))
    theirs = outcome(lambda: F.adaptive_max_pool2d(x, size, True))
    assert_same(mine, theirs, exact=True)
    if mine[1] is None:
        check_grad(lambda t: P.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), x, exact=False)
        check_grad(lambda t: P.adaptive_max_pool2d(t, size), lambda t: F.adaptive_max_pool2d(t, size), x, exact=True)


@SETTINGS
@given(x=inputs())
def test_global_pool2d_property(x):
    assert_same(outcome(lambda: P.global_avg_pool2d(x)), outcome(lambda: F.adaptive_avg_pool2d(x, 1)), exact=False)
    assert_same(outcome(lambda: P.global_max_pool2d(x, True)),
                outcome(lambda: F.adaptive_max_pool2d(x, 1, True)), exact=True)
    if x.numel():
        check_grad(P.global_max_pool2d, lambda t: F.adaptive_max_pool2d(t, 1), x, exact=True)
        check_grad(P.global_avg_pool2d, lambda t: F.adaptive_avg_pool2d(t, 1), x, exact=False)


@SETTINGS
@given(x=inputs(min_hw=1, max_hw=10), data=st.data())
def test_conv2d_property(x, data):
    c = x.shape[-3]
    groups = data.draw(st.sampled_from([1, c] + ([2] if c % 2 == 0 else [])))
    oc = groups * data.draw(st.integers(1, 3))
    k = pair(data.draw, 1, 4)
    kh, kw = (k, k) if isinstance(k, int) else k
    s = pair(data.draw, 1, 3)
    p = data.draw(st.sampled_from([0, 1, 2, (1, 0), "valid", "same"]))
    d = pair(data.draw, 1, 2)
    dtype = x.dtype if x.dtype != torch.float16 else torch.float32  # torch's CPU conv has no fp16
    x = x.to(dtype)
    w = torch.randn(oc, c // groups, kh, kw, generator=torch.Generator().manual_seed(3)).to(dtype)
    b = data.draw(st.sampled_from([None, torch.randn(oc).to(dtype)]))
    args = (s, p, d, groups)
    mine = outcome(lambda: P.conv2d(x, w, b, *args))
    strided_same = p == "same" and s not in (1, (1, 1))
    if strided_same:  # poolops follows TensorFlow here; torch refuses (see tests/test_same_padding.py)
        assert mine[1] is None or x.numel() == 0 or mine[1] is RuntimeError
        return
    theirs = outcome(lambda: F.conv2d(x, w, b, *args))
    if mine[1] is None and theirs[1] is None and mine[0].numel():
        tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(mine[0], theirs[0], rtol=tol, atol=tol)
        wm, wt = w.clone().requires_grad_(), w.clone().requires_grad_()
        xm, xt = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        g = torch.randn(mine[0].shape, generator=torch.Generator().manual_seed(4)).to(dtype)
        gm = torch.autograd.grad(P.conv2d(xm, wm, b, *args), (xm, wm), g)
        gt = torch.autograd.grad(F.conv2d(xt, wt, b, *args), (xt, wt), g)
        for u, v in zip(gm, gt):
            torch.testing.assert_close(u, v, rtol=tol * 3, atol=tol * 3)
        return
    assert (mine[1] is None) == (theirs[1] is None) or x.shape[-3] == 0, (mine, theirs)
