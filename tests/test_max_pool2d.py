import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import poolops
import poolops.functional as P
from poolops import _reference as ref
from poolops._args import max_pool2d_output_shape

from common import DEVICES, FLOAT_DTYPES, LAYOUTS, assert_same_layout, distinct, needs_cuda, run_without_avx512, specials

ops = torch.ops.poolops


def both(x, *args, **kwargs):
    """(poolops, torch) results of the same call."""
    return P.max_pool2d(x, *args, **kwargs), F.max_pool2d(x, *args, **kwargs)


def outcome(fn):
    try:
        return fn()
    except (RuntimeError, IndexError, ValueError) as e:
        return type(e)


# --- A. output size and validation -------------------------------------------------------------

def test_output_size_sweep_matches_torch_and_python_formula():
    """Spec A.1: every (L, k, s, d, p, ceil) gives torch's shape, values and indices, or
    an error where torch errors; the fake kernel's Python formula agrees with the C++ one."""
    checked = 0
    x_cache = {}
    for L, k, s, d, ceil in itertools.product(range(1, 13), range(1, 6), range(1, 5), range(1, 4), (False, True)):
        for p in range(0, k // 2 + 1):
            x = x_cache.setdefault(L, torch.randn(1, 2, L, 5, generator=torch.Generator().manual_seed(L)))
            args = ((k, 1), (s, 1), (p, 0), (d, 1), ceil)
            mine = outcome(lambda: P.max_pool2d(x, *args, return_indices=True))
            theirs = outcome(lambda: F.max_pool2d(x, *args, return_indices=True))
            if isinstance(theirs, type):
                assert mine is theirs, (L, k, s, d, p, ceil)
                continue
            # Where torch points outside the plane (a window wholly in padding, #114216),
            # poolops gives -1; everywhere else the indices are identical.
            outside = theirs[1] >= x.shape[-2] * x.shape[-1]
            expected_idx = torch.where(outside, -1, theirs[1])
            assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], expected_idx), (L, k, s, d, p, ceil)
            assert max_pool2d_output_shape(x.shape, [k, 1], [s, 1], [p, 0], [d, 1], ceil) == list(theirs[0].shape)
            checked += 1
    assert checked > 2000


@pytest.mark.parametrize(
    "hw,k,s,p,expected",
    [((5, 5), 2, 2, 0, (3, 3)), ((5, 5), 3, 3, 1, (2, 2)), ((7, 7), 3, 4, 1, (2, 2)), ((6, 7), 1, 2, 0, (3, 4)),
     ((8, 10), 3, 4, 0, (2, 3))],
)
def test_named_ceil_cases(hw, k, s, p, expected):
    x = torch.randn(2, 3, *hw)
    (a, ia), (b, ib) = both(x, k, s, p, ceil_mode=True, return_indices=True)
    assert a.shape[-2:] == expected
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert torch.isfinite(a).all()  # no window lies wholly outside the input (#45357)


ERROR_CASES = [
    # (kwargs, input shape, exception, message pattern)
    (dict(kernel_size=0), (1, 2, 8, 8), RuntimeError, "stride should not be zero"),
    (dict(kernel_size=0, stride=1), (1, 2, 8, 8), RuntimeError, "kernel size should be greater than zero, but got kH: 0 kW: 0"),
    (dict(kernel_size=-1), (1, 2, 8, 8), RuntimeError, "kernel size should be greater than zero, but got kH: -1"),
    (dict(kernel_size=2, stride=0), (1, 2, 8, 8), RuntimeError, "stride should not be zero"),
    (dict(kernel_size=2, stride=-1), (1, 2, 8, 8), RuntimeError, "stride should be greater than zero, but got dH: -1 dW: -1"),
    (dict(kernel_size=2, dilation=0), (1, 2, 8, 8), RuntimeError, "dilation should be greater than zero, but got dilationH: 0"),
    (dict(kernel_size=3, padding=-1), (1, 2, 8, 8), RuntimeError, "pad must be non-negative, but got pad: -1"),
    (dict(kernel_size=3, padding=2), (1, 2, 8, 8), RuntimeError, "pad should be at most half of effective kernel size, but got pad=2, kernel_size=3"),
    (dict(kernel_size=3, padding=2, dilation=2), (1, 2, 8, 8), RuntimeError, "padW = 2, padH = 2, kW = 3, kH = 3"),
    (dict(kernel_size=9), (1, 3, 8, 8), RuntimeError, r"Given input size: \(3x8x8\). Calculated output size: \(3x0x0\). Output size is too small"),
    (dict(kernel_size=2), (8, 8), RuntimeError, "non-empty 3D or 4D"),
    (dict(kernel_size=2), (1, 1, 2, 8, 8), RuntimeError, "non-empty 3D or 4D"),
    (dict(kernel_size=2), (2, 0, 8, 8), RuntimeError, r"optional 0 dim batch size for input, but got:\[2, 0, 8, 8\]"),
    (dict(kernel_size=2), (2, 3, 0, 8), RuntimeError, r"but got:\[2, 3, 0, 8\]"),
    (dict(kernel_size=(2, 2, 2)), (1, 2, 8, 8), RuntimeError, "kernel_size must either be a single int, or a tuple of two ints"),
    (dict(kernel_size=2, stride=(1, 1, 1)), (1, 2, 8, 8), RuntimeError, "stride must either be omitted, a single int, or a tuple of two ints"),
    (dict(kernel_size=2, padding=(0, 0, 0)), (1, 2, 8, 8), RuntimeError, "padding must either be a single int, or a tuple of two ints"),
    (dict(kernel_size=2, dilation=(1, 1, 1)), (1, 2, 8, 8), RuntimeError, "dilation must be either a single int, or a tuple of two ints"),
    (dict(kernel_size=2**31), (1, 2, 8, 8), RuntimeError, "kernel_size=2147483648: value cannot be converted to type int without overflow"),
    (dict(kernel_size=2.0), (1, 2, 8, 8), TypeError, "'kernel_size' must be an int or a tuple of ints, but found 2.0"),
    (dict(kernel_size=2, stride=[1.5]), (1, 2, 8, 8), TypeError, "'stride' must be an int or a tuple of ints, but found 1.5"),
]


@pytest.mark.parametrize("kwargs,shape,exc,pattern", ERROR_CASES)
def test_errors_match_torch(kwargs, shape, exc, pattern):
    x = torch.randn(shape)
    with pytest.raises(exc, match=pattern):
        P.max_pool2d(x, **kwargs)
    with pytest.raises(Exception):  # torch rejects the same call (message wording may differ)
        F.max_pool2d(x, **kwargs)


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_unsupported_dtypes(dtype):
    with pytest.raises(RuntimeError, match="max_pool2d"):
        P.max_pool2d(torch.zeros(1, 2, 4, 4, dtype=dtype), 2)


def test_errors_are_raised_under_fake_tensors_too():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1, 3, 8, 8)
        with pytest.raises(RuntimeError, match="Output size is too small"):
            ops.max_pool2d(x, [9], [], [0], [1], False)
        with pytest.raises(RuntimeError, match="pad should be smaller than or equal to half"):
            ops.max_pool2d_with_indices(x, [3], [], [2], [2], False)


def test_accepted_edge_inputs():
    for stride in (None, []):
        a, b = both(torch.randn(2, 3, 7, 7), 3, stride)
        assert torch.equal(a, b)
    empty = torch.randn(0, 3, 8, 8)
    (a, ia), (b, ib) = both(empty, 2, return_indices=True)
    assert a.shape == b.shape == (0, 3, 4, 4) and ia.shape == (0, 3, 4, 4)


# --- B. values and indices ---------------------------------------------------------------------

CONFIGS = [
    # kernel, stride, padding, dilation, ceil_mode
    (1, 1, 0, 1, False), (2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, True), (5, 3, 2, 1, True),
    (3, 2, 1, 2, False), (3, 3, 0, 3, True), ((2, 3), (1, 2), (1, 0), (2, 1), True), ((3, 1), (2, 1), (1, 0), 1, False),
    (2, 1, 1, 3, False),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_and_indices_vs_torch_and_reference(cfg, layout):
    k, s, p, d, ceil = cfg
    x = torch.randn(2, 5, 11, 9, dtype=torch.float64).contiguous(memory_format=layout)
    (a, ia), (b, ib) = both(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert_same_layout(a, b)
    assert_same_layout(ia, ib)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    r, ir = ref.max_pool2d(x, pair(k), pair(s), pair(p), pair(d), ceil)
    assert torch.equal(a, r) and torch.equal(ia, ir)
    # The no-index path gives the same values.
    assert torch.equal(P.max_pool2d(x, k, s, p, d, ceil_mode=ceil), a)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ties_take_first_in_scan_order(layout):
    x = torch.zeros(1, 3, 6, 6).contiguous(memory_format=layout)
    (a, ia), (b, ib) = both(x, 3, 2, 1, return_indices=True)
    assert torch.equal(ia, ib)
    assert ia[0, 0].tolist() == [[0, 1, 3], [6, 7, 9], [18, 19, 21]]
    xi = torch.randint(0, 3, (2, 9, 10, 10), generator=torch.Generator().manual_seed(1)).float()
    xi = xi.contiguous(memory_format=layout)
    (a, ia), (b, ib) = both(xi, 3, 1, 1, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_propagates_and_last_nan_wins(layout):
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = float("nan")  # two NaNs in one 2x2 window: index 6 wins
    x[0, 1, 2, 2] = float("nan")
    x[0, 1, 2, 3] = 100.0  # bigger value after a NaN does not replace it
    x[0, 0, 5, 5] = float("nan")  # in the ring next to the padding
    x = x.contiguous(memory_format=layout)
    for args in [(2, 2, 0), (3, 1, 1), (2, 1, 1)]:
        (a, ia), (b, ib) = both(x, *args, return_indices=True)
        assert torch.equal(ia, ib)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    a, ia = P.max_pool2d(x, 2, return_indices=True)
    assert ia[0, 0, 0, 0] == 6 and a[0, 1, 1, 1].isnan()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_minus_inf_and_negative_with_padding(layout):
    x = torch.full((1, 2, 3, 3), float("-inf")).contiguous(memory_format=layout)
    a, ia = P.max_pool2d(x, 3, 1, 1, return_indices=True)
    assert ia[0, 0].flatten().tolist() == [0, 0, 1, 0, 0, 1, 3, 3, 4]
    assert (a == float("-inf")).all()
    for ceil in (False, True):
        (a, ia), (b, ib) = both(x, 2, 2, 1, ceil_mode=ceil, return_indices=True)
        assert torch.equal(a, b) and torch.equal(ia, ib)
    neg = (-1 - torch.rand(2, 3, 7, 7)).contiguous(memory_format=layout)
    (a, ia), (b, ib) = both(neg, 3, 2, 1, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib) and (a < 0).all()


def test_window_wholly_in_padding_policy():
    """pytorch#114216: with dilation a window can hold no input element. torch writes an
    out-of-plane index (and its CPU backward writes out of bounds). poolops gives the
    same value, -inf, an index of -1, and routes no gradient from that output."""
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    a, ia = P.max_pool2d(x, 2, 1, 1, 3, return_indices=True)
    b, _ = F.max_pool2d(x.detach(), 2, 1, 1, 3, return_indices=True)
    assert torch.equal(a.detach(), b)
    empty = torch.isinf(a.detach())
    assert empty.any() and (ia[empty] == -1).all() and (ia[~empty] >= 0).all()
    a.sum().backward()
    assert x.grad.sum() == (~empty).sum()
    x32 = torch.randn(2, 3, 2, 2)  # float32 small planes: eight planes at a time
    a, ia = P.max_pool2d(x32, 2, 1, 1, 3, return_indices=True)
    assert torch.equal(a, F.max_pool2d(x32, 2, 1, 1, 3))
    empty = torch.isinf(a)
    assert empty.any() and (ia[empty] == -1).all() and (ia[~empty] >= 0).all()
    assert (ops.max_pool2d_with_taps(x32, [2], [1], [1], [3], False)[1][empty] == 255).all()
    wide = torch.randn(1, 1, 1, 224)  # the issue's own case
    a, ia = P.max_pool2d(wide, (1, 3), (1, 6), (0, 1), (1, 2), return_indices=True)
    assert torch.equal(a, F.max_pool2d(wide, (1, 3), (1, 6), (0, 1), (1, 2)))
    assert (ia >= -1).all() and (ia < 224).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reduced_precision_equals_float_rounded(dtype, layout):
    x = torch.randn(2, 17, 10, 10).to(dtype).contiguous(memory_format=layout)
    (a, ia), (b, ib) = both(x, 3, 2, 1, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    f, fi = P.max_pool2d(x.float(), 3, 2, 1, return_indices=True)
    assert torch.equal(a, f.to(dtype)) and torch.equal(ia, fi)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 3, 1, 2), (5, 3, 2, 1), (3, 1, 1, 1)])
def test_reduced_precision_strides_and_wide_rows(dtype, k, s, p, d):
    """NCHW half/bfloat16 rows are split by stride phase (PhaseRow): values and indices as torch's, also past the
    256-output block of a row; ties (small integers) keep the first tap."""
    for x in (torch.randn(2, 3, 11, 13), torch.randn(1, 2, 5, 700), torch.randint(0, 3, (1, 2, 9, 40)).float()):
        x = x.to(dtype)
        (a, ia), (b, ib) = both(x, k, s, p, d, return_indices=True)
        assert torch.equal(a, b) and torch.equal(ia, ib), (k, s, p, d, tuple(x.shape))
        assert torch.equal(P.max_pool2d(x, k, s, p, d), b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32])
@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (2, 2, 0, 1), (4, 2, 1, 1), (5, 2, 2, 1), (3, 1, 1, 1), (3, 3, 1, 2),
                                     (2, 2, 1, 2), (4, 4, 0, 1)])
def test_row_sweep_specials(dtype, k, s, p, d):
    """NCHW rows with enough inner outputs are swept a block at a time (sixteen float lanes with AVX-512 for float,
    half and bfloat16 when a row has 16 such outputs, else eight; wider scalar blocks for the rest; at stride 2 adjacent taps load in pairs, an odd last one reaching
    back), the last block overlapping the one before; planes with shorter
    rows go eight planes at a time (float, half, bfloat16; six planes here, so the group is part empty). Widths
    from 5 to 150 give torch's values (NaN: the last wins; +-0: the first wins), indices and taps."""
    from poolops._autograd import _taps_to_indices

    for W in (5, 9, 16, 23, 40, 61, 150):
        x = specials((2, 3, 7, W), W)
        if not dtype.is_floating_point:
            x = x.nan_to_num(0, 0, -5)
        x = x.to(dtype)
        (a, ia), (b, ib) = both(x, k, s, p, d, return_indices=True)
        assert torch.equal(ia, ib), W
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), W
        if dtype.is_floating_point:
            assert torch.equal(a.signbit(), b.signbit()), W
        values = P.max_pool2d(x, k, s, p, d)  # the values-only kernels: the same bits, -0 and NaN included
        if dtype.is_floating_point:
            bits = getattr(torch, f"int{dtype.itemsize * 8}")
            assert torch.equal(values.view(bits), a.view(bits)), W
        else:
            assert torch.equal(values, a), W
        params = [[v] for v in (k, s, p, d)]
        out, taps = ops.max_pool2d_with_taps(x, *params, False)
        assert torch.equal(_taps_to_indices(taps, x.shape, *params), ib) and torch.equal(out.isnan(), b.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nhwc_channel_blocks_specials(dtype):
    """Channels-last windows scan blocks of 32 channels in vector registers (sixteen floats with AVX-512, eight
    without), then the rest: torch's values (NaN: the last wins; +-0: the first wins) and indices in every
    block and the tail, the values-only kernel's same bits, and taps that decode to the indices."""
    from poolops._autograd import _taps_to_indices

    x = specials((2, 32 * 2 + 16 + 5, 9, 11), 3).to(dtype).contiguous(memory_format=torch.channels_last)
    for k, s, p, d, ceil in [(3, 2, 1, 1, False), (2, 2, 0, 1, True), (3, 1, 1, 2, False), ((2, 3), (1, 2), (1, 0), 1, True)]:
        (a, ia), (b, ib) = both(x, k, s, p, d, ceil, return_indices=True)
        assert torch.equal(ia, ib) and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        assert torch.equal(a.nan_to_num().signbit(), b.nan_to_num().signbit())
        bits = getattr(torch, f"int{dtype.itemsize * 8}")
        assert torch.equal(P.max_pool2d(x, k, s, p, d, ceil).view(bits), a.view(bits))
        params = [list(v) if isinstance(v, tuple) else [v] for v in (k, s, p, d)]
        out, taps = ops.max_pool2d_with_taps(x, *params, ceil)
        assert torch.equal(out.view(bits), a.view(bits)) and torch.equal(_taps_to_indices(taps, x.shape, *params), ib)


def test_vector_blocks_without_avx512():
    """The eight-float paths that AVX-512 replaces here: NCHW row blocks and channels-last channel blocks."""
    dtypes = [(torch.float32,), (torch.float16,), (torch.bfloat16,)]
    run_without_avx512("test_max_pool2d", "test_nhwc_channel_blocks_specials", dtypes)
    run_without_avx512("test_adaptive_global", "test_adaptive_nhwc_channel_blocks", dtypes)
    run_without_avx512("test_max_pool2d", "test_row_sweep_specials",
                       [dt + ksp for dt in dtypes for ksp in [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 1), (3, 3, 1, 2)]])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_integer_inputs_exact(dtype):
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (2, 3, 9, 9), dtype=dtype)
    (a, ia), (b, ib) = both(x, 3, 2, 1, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    lowest = torch.full((1, 2, 4, 4), info.min, dtype=dtype)
    (a, ia), (b, ib) = both(lowest, 2, 1, 1, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)


@pytest.mark.parametrize("C", [1, 7, 8, 9, 17, 64, 300])
def test_channel_counts_and_layouts(C):
    x = torch.randn(2, C, 9, 8)
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3), x[:, :, 1::2, :], x[0]):
        (a, ia), (b, ib) = both(t, 3, 2, 1, return_indices=True)
        assert torch.equal(a, b) and torch.equal(ia, ib)
        assert_same_layout(a, b)
        assert_same_layout(ia, ib)


def test_wide_rows_cross_the_lane_chunks():
    x = torch.randn(1, 2, 5, 1100)
    for args in [(3, 1, 1), (2, 2, 0), (3, 3, 1, 2)]:
        (a, ia), (b, ib) = both(x, *args, return_indices=True)
        assert torch.equal(a, b) and torch.equal(ia, ib)


def test_indices_feed_max_unpool2d():
    x = distinct((2, 3, 8, 8), torch.float32)
    a, ia = P.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(F.max_unpool2d(a, ia, 2), F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2))


# --- C. backward -------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_bit_exact_vs_torch_and_reference(cfg, dtype):
    k, s, p, d, ceil = cfg
    base = torch.randint(0, 4, (2, 3, 11, 9), generator=torch.Generator().manual_seed(3)).to(dtype)  # many ties
    grads = []
    g = None
    for layout in LAYOUTS:
        x1 = base.clone().contiguous(memory_format=layout).requires_grad_()
        x2 = base.clone().contiguous(memory_format=layout).requires_grad_()
        y1, i1 = P.max_pool2d(x1, k, s, p, d, ceil_mode=ceil, return_indices=True)
        y2 = F.max_pool2d(x2, k, s, p, d, ceil_mode=ceil)
        g = torch.randn(y1.shape, dtype=dtype) if g is None else g
        y1.backward(g)
        y2.backward(g)
        assert torch.equal(x1.grad, x2.grad)
        assert_same_layout(x1.grad, x2.grad)
        expected = ref.max_pool2d_backward(g, i1, base.shape)
        torch.testing.assert_close(x1.grad.double(), expected, rtol=1e-6 if dtype == torch.float32 else 0, atol=1e-6 if dtype == torch.float32 else 0)
        grads.append(x1.grad)
    assert torch.equal(grads[0], grads[1])


def test_overlapping_windows_accumulate():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = 1
    x.requires_grad_()
    P.max_pool2d(x, 2, 1).sum().backward()
    assert x.grad[0, 0, 1, 1] == 4 and x.grad.sum() == 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_grad_is_float_grad_rounded(dtype):
    x = distinct((2, 4, 9, 9), torch.float32).to(dtype)
    g = torch.randn(2, 4, 5, 5).to(dtype)
    gx = torch.autograd.grad(P.max_pool2d(x.requires_grad_(), 3, 2, 1), x, g)[0]
    gf = torch.autograd.grad(P.max_pool2d(x.float().requires_grad_(), 3, 2, 1), x, g.float(), allow_unused=True)
    xf = x.detach().float().requires_grad_()
    gf = torch.autograd.grad(P.max_pool2d(xf, 3, 2, 1), xf, g.float())[0]
    assert torch.equal(gx, gf.to(dtype))


@pytest.mark.parametrize("dtype,hw", [(torch.float32, 260), (torch.bfloat16, 372)])  # planes of 32-byte multiples
def test_large_nchw_gradients_stream(dtype, hw):
    """NCHW input gradients of 16 MiB and more are summed plane by plane and written with non-temporal stores:
    torch's bits for float (indices and taps), the float gradient rounded for bfloat16, twice into a reused
    buffer."""
    x = distinct((1, 64, hw, hw), torch.float32, seed=3).to(dtype)
    g = torch.randn(1, 64, (hw + 1) // 2, (hw + 1) // 2).to(dtype)
    xf = x.float().requires_grad_()
    expected = torch.autograd.grad(F.max_pool2d(xf, 3, 2, 1), xf, g.float())[0].to(dtype)
    assert expected.numel() * expected.element_size() >= 16 << 20
    for indices in (False, True, False):
        xm = x.clone().requires_grad_()
        out = P.max_pool2d(xm, 3, 2, 1, return_indices=indices)
        gx = torch.autograd.grad(out[0] if indices else out, xm, g)[0]
        assert torch.equal(gx, expected), indices


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_nhwc_inputs_with_overlapping_rows(dtype):
    """Channels-last inputs of 16 MiB and more under windows overlapping along H prefetch the rows below each
    window: torch's values and indices, dilation and ceil_mode (windows running past the last row) included."""
    x = torch.randn(1, 64, 372, 186 if dtype == torch.float32 else 372).to(dtype)
    assert x.numel() * x.element_size() >= 16 << 20
    xl = x.contiguous(memory_format=torch.channels_last)
    for k, s, p, d, ceil in ((3, 2, 1, 1, False), (3, 2, 0, 2, True), (4, 3, 1, 1, True)):
        y, i = P.max_pool2d(xl, k, s, p, d, ceil, return_indices=True)
        yt, it = F.max_pool2d(xl, k, s, p, d, ceil, return_indices=True)
        assert torch.equal(y, yt) and torch.equal(i, it), (k, s, p, d, ceil)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(P.max_pool2d(xl, k, s, p, d, ceil), yt)


def test_return_indices_and_no_grad_paths_give_same_gradient():
    x = distinct((2, 3, 8, 8))
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    P.max_pool2d(a, 3, 2, 1, return_indices=True)[0].backward(g)
    ops.max_pool2d(b, [3], [2], [1], [1], False).backward(g)  # the index-free op recomputes
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("cfg", [(3, 2, 1, 1, False), (2, 1, 1, 1, True), ((3, 2), (2, 1), (1, 1), (1, 2), True)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_and_gradgradcheck(cfg, layout):
    k, s, p, d, ceil = cfg
    x = distinct((2, 3, 7, 6)).contiguous(memory_format=layout).requires_grad_()
    for fn in (lambda t: P.max_pool2d(t, k, s, p, d, ceil_mode=ceil),
               lambda t: ops.max_pool2d(t, *[list(v) if isinstance(v, tuple) else [v] for v in (k, s, p, d)], ceil)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_double_backward_is_gather_at_argmax():
    x = distinct((1, 2, 6, 6)).requires_grad_()
    y, idx = P.max_pool2d(x, 3, 2, 1, return_indices=True)
    g = torch.randn_like(y, requires_grad=True)
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    gg = torch.randn_like(gx)
    (ggo,) = torch.autograd.grad(gx, g, gg)
    assert torch.equal(ggo, gg.flatten(-2).gather(-1, idx.flatten(-2)).view_as(idx))


# --- registration, compile ---------------------------------------------------------------------

def _opcheck_samples():
    x = torch.randn(2, 3, 9, 8)
    yield ops.max_pool2d_with_indices, (x, [3], [2], [1], [1], False)
    yield ops.max_pool2d_with_indices, (x.contiguous(memory_format=torch.channels_last).requires_grad_(), [2, 3], [], [1, 0], [1, 2], True)
    yield ops.max_pool2d_with_indices, (x[0].transpose(1, 2).requires_grad_(), [3], [1], [1], [1], False)
    yield ops.max_pool2d, (x, [2], [2], [0], [1], True)
    yield ops.max_pool2d, (x.double().requires_grad_(), [3], [2], [1], [2], False)
    y, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    yield ops._max_pool2d_backward, (torch.randn_like(y).requires_grad_(), idx, list(x.shape), [3], [2], [1], [1], False)


@pytest.mark.parametrize("op,args", list(_opcheck_samples()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    torch._dynamo.reset()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.pool = poolops.nn.MaxPool2d(3, 2, 1)

        def forward(self, x):
            return self.pool(torch.relu(self.conv(x))).sum()

    net = Net()
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), net(x))
    compiled(x).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).backward()
    for a, b in zip(grads, [p.grad for p in net.parameters()]):
        torch.testing.assert_close(a, b)
    f = torch.compile(lambda t: P.max_pool2d(t, 2, return_indices=True), backend="aot_eager", fullgraph=True, dynamic=True)
    for shape in [(1, 2, 8, 8), (3, 2, 10, 7)]:
        t = torch.randn(shape)
        a, ia = f(t)
        b, ib = F.max_pool2d(t, 2, return_indices=True)
        assert torch.equal(a, b) and torch.equal(ia, ib)


# --- CUDA --------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_torch_cuda_and_cpu(cfg, dtype, layout):
    k, s, p, d, ceil = cfg
    x = torch.randn(2, 19, 13, 11).to(dtype).contiguous(memory_format=layout)
    xc = x.cuda().requires_grad_()
    (a, ia), (b, ib) = both(xc, k, s, p, d, ceil_mode=ceil, return_indices=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert_same_layout(a, b)
    cpu, cpu_i = P.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    assert torch.equal(a.cpu(), cpu) and torch.equal(ia.cpu(), cpu_i)
    g = torch.randn_like(a)
    (mine,) = torch.autograd.grad(a, xc, g)
    (theirs,) = torch.autograd.grad(b, xc, g)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0 if dtype in (torch.float32, torch.float64) else 1e-2)
    xcpu = x.clone().requires_grad_()
    (mine_cpu,) = torch.autograd.grad(P.max_pool2d(xcpu, k, s, p, d, ceil_mode=ceil), xcpu, g.cpu())
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(mine.cpu(), mine_cpu)


@needs_cuda
def test_cuda_backward_deterministic():
    x = torch.randint(0, 3, (4, 16, 32, 32), device="cuda").float().requires_grad_()
    g = torch.randn(4, 16, 16, 16, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(P.max_pool2d(x, 3, 2, 1), x, g)[0] for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@needs_cuda
def test_cuda_no_index_path_and_empty():
    x = torch.randn(3, 8, 20, 20, device="cuda")
    assert torch.equal(P.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    assert P.max_pool2d(torch.randn(0, 8, 20, 20, device="cuda"), 2).shape == (0, 8, 10, 10)


# --- training without indices: one-byte taps ---------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_taps_decode_to_the_indices(cfg, layout):
    from poolops._autograd import _taps_to_indices

    k, s, p, d, ceil = cfg
    params = [list(v) if isinstance(v, tuple) else [v] for v in (k, s, p, d)]
    x = torch.randint(0, 3, (2, 5, 11, 9), generator=torch.Generator().manual_seed(5)).float()
    x = x.contiguous(memory_format=layout)
    out, taps = ops.max_pool2d_with_taps(x, *params, ceil)
    ref_out, idx = ops.max_pool2d_with_indices(x, *params, ceil)
    assert taps.dtype == torch.uint8 and torch.equal(out, ref_out)
    assert_same_layout(out, ref_out)
    assert taps.stride() == idx.stride()
    assert torch.equal(_taps_to_indices(taps, x.shape, *params), idx)
    g = torch.randn(out.shape)
    assert torch.equal(ops._max_pool2d_backward(g, taps, list(x.shape), *params, ceil),
                       ops._max_pool2d_backward(g, idx, list(x.shape), *params, ceil))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tiling_windows_backward_gathers(dtype, layout):
    """kernel == stride without padding: the taps backward gathers each input's gradient (sixteen bfloat16 lanes on
    the bits, eight float lanes otherwise) instead of scattering. Bit for bit the scatter of the int64 indices and
    torch: -0 and NaN gradients come out as 0 + g rounded (+0, the quiet NaN), odd sizes and ceil-mode windows
    leave uncovered inputs at 0, channel tails and short rows take the scalar path."""
    for shape, k, ceil in [((2, 19, 9, 37), 2, False), ((1, 24, 8, 40), 2, True), ((2, 3, 7, 11), 3, True),
                           ((1, 16, 6, 6), (2, 3), False), ((2, 5, 4, 33), 1, False)]:
        x = torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(3)).to(dtype)  # ties
        x = x.contiguous(memory_format=layout)
        params = [list(k) if isinstance(k, tuple) else [k], [], [0], [1]]
        out, taps = ops.max_pool2d_with_taps(x, *params, ceil)
        _, idx = ops.max_pool2d_with_indices(x, *params, ceil)
        g = torch.randn(out.shape)
        g.view(-1)[::7] = -0.0
        g.view(-1)[3::11] = float("nan")
        g = g.to(dtype).contiguous(memory_format=layout)
        gathered = ops._max_pool2d_backward(g, taps, list(x.shape), *params, ceil)
        scattered = ops._max_pool2d_backward(g, idx, list(x.shape), *params, ceil)
        bits = getattr(torch, f"int{dtype.itemsize * 8}")
        assert torch.equal(gathered.view(bits), scattered.view(bits)), (shape, k, ceil)
        assert_same_layout(gathered, scattered)
        xt = x.detach().requires_grad_()
        F.max_pool2d(xt, k, ceil_mode=ceil).backward(g)
        assert torch.equal(gathered.nan_to_num(), xt.grad.nan_to_num()) and torch.equal(gathered.isnan(), xt.grad.isnan())
    bad = torch.full((1, 16, 2, 2), 4, dtype=torch.uint8).contiguous(memory_format=layout)
    with pytest.raises(RuntimeError, match="invalid max index .* or tap"):
        ops._max_pool2d_backward(torch.randn(1, 16, 2, 2), bad, [1, 16, 4, 4], [2], [], [0], [1], False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_overlapping_windows_nhwc_backward_gathers(dtype):
    """Channels-last taps backward with up to 9 windows spanning an input (3/2/1, 3/1/1, dilated, 'same'-like
    asymmetric padding, ceil mode, gaps between windows): a gather over the spanning outputs, 32 and 8 channels a
    register and a scalar tail, bit for bit the int64 scatter and torch. Wider overlaps (5/1) keep the scatter; both
    paths agree."""
    cases = [((2, 37, 11, 13), [3], [2], [1], [1], False), ((1, 13, 9, 10), [3], [1], [1], [1], False),
             ((2, 40, 12, 9), [3], [2], [1], [2], True), ((1, 8, 7, 8), [2, 3], [2, 1], [0, 1], [1], True),
             ((1, 9, 10, 11), [3], [2], [0, 1, 1, 0], [1], False), ((1, 5, 8, 8), [5], [1], [2], [1], False),
             ((2, 11, 10, 11), [2], [3], [0], [1], True)]  # stride past the kernel: inputs no window holds
    for i, (shape, *params, ceil) in enumerate(cases):
        x = specials(shape, seed=i).to(dtype).contiguous(memory_format=torch.channels_last)
        out, taps = ops.max_pool2d_with_taps(x, *params, ceil)
        _, idx = ops.max_pool2d_with_indices(x, *params, ceil)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(i))
        g.view(-1)[::7] = -0.0
        g.view(-1)[3::11] = float("nan")
        g = g.to(dtype).contiguous(memory_format=torch.channels_last)
        gathered = ops._max_pool2d_backward(g, taps, list(x.shape), *params, ceil)
        scattered = ops._max_pool2d_backward(g, idx, list(x.shape), *params, ceil)
        bits = getattr(torch, f"int{dtype.itemsize * 8}")
        assert torch.equal(gathered.view(bits), scattered.view(bits)), (shape, params, ceil)
        assert_same_layout(gathered, scattered)
        if len(params[2]) == 1:  # torch adds half/bf16 gradients in half/bf16; poolops in float, rounding once
            k, s, p, d = params
            wide = torch.float64 if dtype == torch.float64 else torch.float32
            xt = x.detach().to(wide).requires_grad_()
            F.max_pool2d(xt, k, s, p, d, ceil).backward(g.to(wide))
            expected = xt.grad.to(dtype)
            assert torch.equal(gathered.nan_to_num(), expected.nan_to_num())
            assert torch.equal(gathered.isnan(), expected.isnan())
    bad = torch.full((1, 16, 2, 2), 9, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="invalid max index .* or tap \\(not below 9"):
        ops._max_pool2d_backward(torch.randn(1, 16, 2, 2), bad, [1, 16, 4, 4], [3], [2], [1], [1], False)


def test_taps_empty_window_is_255():
    out, taps = ops.max_pool2d_with_taps(torch.randn(1, 1, 2, 2), [2], [1], [1], [3], False)
    assert (taps[out == float("-inf")] == 255).all() and (taps[out != float("-inf")] < 4).all()


def test_training_keeps_one_byte_per_output():
    """The autograd graph of max_pool2d(return_indices=False) saves only the
    taps: 1 byte per output, against torch's input plus 8-byte indices."""
    def saved_bytes(fn, x):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn(x)
        return sum(total), y

    x = torch.randn(4, 8, 32, 32, requires_grad=True)
    mine, y = saved_bytes(lambda t: P.max_pool2d(t, 3, 2, 1), x)
    theirs, _ = saved_bytes(lambda t: F.max_pool2d(t, 3, 2, 1), x)
    assert mine == y.numel() * 1
    assert theirs >= y.numel() * 8
    big_kernel = P.max_pool2d(torch.randn(1, 2, 20, 20, requires_grad=True), 16, 1)  # 256 taps: int64 indices
    assert big_kernel.grad_fn is not None


@pytest.mark.parametrize("fn", [lambda t: P.max_pool2d(t, 3, 2, 1), lambda t: P.max_pool2d(t, 3, 2, 1, return_indices=True)[0],
                                lambda t: P.max_pool2d(t, 16, 1), lambda t: P.adaptive_max_pool2d(t, 5),
                                lambda t: P.global_max_pool2d(t)])
def test_backward_makes_no_index_gradient(fn):
    """The index output takes no gradient: autograd must not fill one with
    zeros (8 bytes per output) on every backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class IntegerOutputs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and not out.is_floating_point():
                self.made.append(func)
            return out

    x = torch.randn(2, 3, 20, 20, requires_grad=True)
    y = fn(x)
    with IntegerOutputs() as mode:
        (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert mode.made == []
    assert grad.sum().item() == pytest.approx(y.numel())


def test_taps_limits_and_errors():
    with pytest.raises(RuntimeError, match="16x16 window has more than 255 taps"):
        ops.max_pool2d_with_taps(torch.randn(1, 1, 20, 20), [16], [1], [0], [1], False)
    with pytest.raises(RuntimeError, match="invalid max index .* or tap"):
        ops._max_pool2d_backward(torch.randn(1, 1, 2, 2), torch.full((1, 1, 2, 2), 9, dtype=torch.uint8),
                                 [1, 1, 4, 4], [2], [], [0], [1], False)
    with pytest.raises(RuntimeError, match="indices must be int64 \\(or uint8 taps\\)"):
        ops._max_pool2d_backward(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.int32),
                                 [1, 1, 4, 4], [2], [], [0], [1], False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_taps(layout):
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=layout).requires_grad_()
    torch.library.opcheck(ops.max_pool2d_with_taps, (x, [3], [2], [1], [2], True))
    _, taps = ops.max_pool2d_with_taps(x.detach(), [3], [2], [1], [1], False)
    g = torch.randn(2, 3, 5, 4).contiguous(memory_format=layout).requires_grad_()
    torch.library.opcheck(ops._max_pool2d_backward, (g, taps, list(x.shape), [3], [2], [1], [1], False))


@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_taps(layout):
    x = torch.randint(0, 3, (2, 7, 13, 11)).float().contiguous(memory_format=layout)
    for params, ceil in [([[3], [2], [1], [1]], False), ([[2, 3], [1, 2], [1, 0], [2, 1]], True)]:
        out, taps = ops.max_pool2d_with_taps(x.cuda(), *params, ceil)
        ref_out, ref_taps = ops.max_pool2d_with_taps(x, *params, ceil)
        assert torch.equal(out.cpu(), ref_out) and torch.equal(taps.cpu(), ref_taps)
        g = torch.randn(out.shape)
        assert torch.equal(ops._max_pool2d_backward(g.cuda(), taps, list(x.shape), *params, ceil).cpu(),
                           ops._max_pool2d_backward(g, ref_taps, list(x.shape), *params, ceil))
