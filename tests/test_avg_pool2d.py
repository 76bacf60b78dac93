import itertools

import pytest
import torch
import torch.nn.functional as F

import poolops
import poolops.functional as P
from poolops import _reference as ref
from poolops._args import avg_pool2d_output_shape

from common import FLOAT_DTYPES, LAYOUTS, assert_compiled_matches_eager, assert_same_layout, needs_cuda, run_without_avx512

ops = torch.ops.poolops
pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731


def outcome(fn):
    try:
        return fn()
    except (RuntimeError, IndexError, ValueError) as e:
        return type(e)


# --- shape sweep, named cases, errors ----------------------------------------------------------

def test_output_size_sweep_matches_torch_and_python_formula():
    checked = 0
    for L, k, s, ceil in itertools.product(range(1, 13), range(1, 6), range(1, 5), (False, True)):
        x = torch.randn(1, 2, L, 3, generator=torch.Generator().manual_seed(L))
        for p in range(0, k // 2 + 1):
            for cip in (True, False):
                args = ((k, 1), (s, 1), (p, 0), ceil, cip)
                mine, theirs = outcome(lambda: P.avg_pool2d(x, *args)), outcome(lambda: F.avg_pool2d(x, *args))
                if isinstance(theirs, type):
                    assert mine is theirs, (L, k, s, p, ceil)
                    continue
                assert torch.equal(mine, theirs), (L, k, s, p, ceil, cip)
                assert avg_pool2d_output_shape(x.shape, [k, 1], [s, 1], [p, 0], ceil, None) == list(theirs.shape)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    "L,k,s,p,cip,expected",
    [(5, 2, 2, 0, True, [1.0, 1.0, 1.0]), (4, 3, 2, 1, True, [2 / 3, 1.0, 0.5]), (4, 3, 2, 1, False, [1.0, 1.0, 1.0])],
)
def test_named_border_cases(L, k, s, p, cip, expected):
    x = torch.ones(1, 1, 1, L, dtype=torch.float64)
    a = P.avg_pool2d(x, (1, k), (1, s), (0, p), ceil_mode=True, count_include_pad=cip)
    assert torch.equal(a, F.avg_pool2d(x, (1, k), (1, s), (0, p), ceil_mode=True, count_include_pad=cip))
    torch.testing.assert_close(a.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    ar = P.avg_pool2d(torch.arange(5.0).view(1, 1, 1, 5), (1, 2), ceil_mode=True)
    assert ar.flatten().tolist() == [0.5, 2.5, 4.0]


def test_divisor_override_one_gives_window_sums():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    a = P.avg_pool2d(x, 3, 1, 1, divisor_override=1)
    sums = F.conv2d(x.view(2, 1, 6, 6), torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1).view(1, 2, 6, 6)
    torch.testing.assert_close(a, sums)


ERROR_CASES = [
    (dict(kernel_size=0), (1, 2, 8, 8), RuntimeError, "stride should not be zero"),
    (dict(kernel_size=0, stride=1), (1, 2, 8, 8), RuntimeError, "kernel size should be greater than zero, but got kH: 0 kW: 0"),
    (dict(kernel_size=-1), (1, 2, 8, 8), RuntimeError, "kernel size should be greater than zero"),
    (dict(kernel_size=2, stride=-1), (1, 2, 8, 8), RuntimeError, "stride should be greater than zero, but got dH: -1 dW: -1"),
    (dict(kernel_size=3, padding=-1), (1, 2, 8, 8), RuntimeError, "pad must be non-negative, but got pad: -1"),
    (dict(kernel_size=3, padding=2), (1, 2, 8, 8), RuntimeError, "pad should be at most half of effective kernel size"),
    (dict(kernel_size=9), (1, 3, 8, 8), RuntimeError, r"Given input size: \(3x8x8\). Calculated output size: \(3x0x0\)"),
    (dict(kernel_size=2), (8, 8), IndexError, r"Dimension out of range \(expected to be in range of \[-2, 1\], but got -3\)"),
    (dict(kernel_size=2), (8,), IndexError, "Dimension out of range"),
    (dict(kernel_size=2), (1, 1, 2, 8, 8), RuntimeError, r"optional 0 dim batch size for input, but got:\[1, 1, 2, 8, 8\]"),
    (dict(kernel_size=2), (2, 0, 8, 8), RuntimeError, r"but got:\[2, 0, 8, 8\]"),
    (dict(kernel_size=(2, 2, 2)), (1, 2, 8, 8), RuntimeError, "avg_pool2d: kernel_size must either be a single int, or a tuple of two ints"),
    (dict(kernel_size=2, stride=(1, 1, 1)), (1, 2, 8, 8), RuntimeError, "avg_pool2d: stride must either be omitted"),
    (dict(kernel_size=2, padding=(0, 0, 0)), (1, 2, 8, 8), RuntimeError, "avg_pool2d: padding must either be a single int"),
    (dict(kernel_size=2, divisor_override=0), (1, 2, 8, 8), RuntimeError, "divisor must be not zero"),
    (dict(kernel_size=2**31), (1, 2, 8, 8), RuntimeError, "value cannot be converted to type int without overflow"),
    (dict(kernel_size=2.0), (1, 2, 8, 8), TypeError, "'kernel_size' must be an int or a tuple of ints"),
]


@pytest.mark.parametrize("kwargs,shape,exc,pattern", ERROR_CASES)
def test_errors_match_torch(kwargs, shape, exc, pattern):
    x = torch.randn(shape)
    with pytest.raises(exc, match=pattern):
        P.avg_pool2d(x, **kwargs)
    with pytest.raises(Exception):
        F.avg_pool2d(x, **kwargs)


def test_errors_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(RuntimeError, match="divisor must be not zero"):
            ops.avg_pool2d(torch.empty(1, 3, 8, 8), [2], [], [0], False, True, 0)
        with pytest.raises(IndexError, match="Dimension out of range"):
            ops.avg_pool2d(torch.empty(8, 8), [2], [], [0], False, True, None)


def test_accepted_edge_inputs():
    x = torch.randn(2, 3, 7, 7)
    for stride in (None, []):
        assert torch.equal(P.avg_pool2d(x, 3, stride), F.avg_pool2d(x, 3, stride))
    assert torch.equal(P.avg_pool2d(x, 3, 2, 1, divisor_override=-2), F.avg_pool2d(x, 3, 2, 1, divisor_override=-2))
    assert P.avg_pool2d(torch.randn(0, 3, 8, 8), 2).shape == (0, 3, 4, 4)
    assert torch.equal(P.avg_pool2d(x[0], 3, 2, 1), F.avg_pool2d(x[0], 3, 2, 1))


# --- values ------------------------------------------------------------------------------------

CONFIGS = [
    # kernel, stride, padding, ceil_mode
    (1, 1, 0, False), (2, 2, 0, False), (2, 2, 0, True), (3, 2, 1, False), (3, 2, 1, True), (3, 1, 1, True),
    (5, 3, 2, True), ((2, 3), (1, 2), (1, 0), True), ((3, 1), (2, 1), (1, 0), False),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grid_vs_torch_and_reference(layout):
    """Spec D.1: fp32 bit-exact vs torch; fp64 equal to the reference. Rows of 43 take the NCHW block sweep
    (sixteen float lanes with AVX-512, else eight; wider blocks for double), rows of 9 the per-output path."""
    for (k, s, p, ceil), cip, div, W in itertools.product(CONFIGS, (True, False), (None, 1, 3, -2), (9, 43)):
        x = torch.randn(2, 5, 11, W, generator=torch.Generator().manual_seed(7))
        for dtype in (torch.float32, torch.float64):
            xt = x.to(dtype).contiguous(memory_format=layout)
            a = P.avg_pool2d(xt, k, s, p, ceil, cip, div)
            b = F.avg_pool2d(xt, k, s, p, ceil, cip, div)
            assert torch.equal(a, b), (k, s, p, ceil, cip, div, dtype)
            assert_same_layout(a, b)
        r = ref.avg_pool2d(x.double(), pair(k), pair(s), pair(p), ceil, cip, div)
        torch.testing.assert_close(P.avg_pool2d(x.double(), k, s, p, ceil, cip, div), r, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reduced_precision_equals_float_rounded(dtype, layout):
    x = torch.randn(2, 17, 10, 10).to(dtype).contiguous(memory_format=layout)
    a = P.avg_pool2d(x, 3, 2, 1)
    assert torch.equal(a, P.avg_pool2d(x.float(), 3, 2, 1).to(dtype))
    big = (1000 + torch.rand(1, 2, 64, 64)).to(dtype).contiguous(memory_format=layout)
    assert torch.equal(P.avg_pool2d(big, 64), P.avg_pool2d(big.float(), 64).to(dtype))
    torch.testing.assert_close(a, F.avg_pool2d(x, 3, 2, 1), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (4, 2, 1), (5, 2, 2), (3, 3, 1), (5, 3, 2), (3, 1, 1)])
def test_reduced_precision_strides_and_wide_rows(dtype, k, s, p):
    """NCHW half/bfloat16 rows are split by stride phase (PhaseRow): the float result rounded once, also past the
    256-output block of a row, and the NHWC kernel agrees."""
    for x in (torch.randn(2, 3, 11, 13), torch.randn(1, 2, 5, 700)):
        x = x.to(dtype)
        a = P.avg_pool2d(x, k, s, p)
        assert torch.equal(a, P.avg_pool2d(x.float(), k, s, p).to(dtype)), (k, s, p, tuple(x.shape))
        assert torch.equal(P.avg_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p), a)
        torch.testing.assert_close(a, F.avg_pool2d(x, k, s, p), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("C", [1, 7, 17, 300])
def test_layouts_and_channel_counts(C):
    x = torch.randn(2, C, 9, 8)
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3), x[:, :, 1::2, :], x[0]):
        a, b = P.avg_pool2d(t, 3, 2, 1), F.avg_pool2d(t, 3, 2, 1)
        assert torch.equal(a, b)
        assert_same_layout(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nhwc_sums_in_channel_blocks(dtype):
    """Channels-last half/bfloat16 sums run in blocks of 64 channels (sixteen-float registers with AVX-512,
    eight-float without), then the rest: the float result rounded once, the same bits as the NCHW kernels, for
    avg, adaptive avg and global avg pooling."""
    x = torch.randn(2, 64 * 2 + 16 + 3, 9, 10).to(dtype)
    xl = x.contiguous(memory_format=torch.channels_last)
    for pool in (lambda t: P.avg_pool2d(t, 3, 2, 1), lambda t: P.avg_pool2d(t, 2, 2, 0, True, False),
                 lambda t: P.adaptive_avg_pool2d(t, (4, 3)), P.global_avg_pool2d):
        a = pool(xl)
        assert a.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, pool(x)) and torch.equal(a, pool(x.float()).to(dtype))


def test_vector_blocks_without_avx512():
    """The eight-float paths that AVX-512 replaces here: channels-last channel blocks and NCHW row blocks."""
    run_without_avx512("test_avg_pool2d", "test_nhwc_sums_in_channel_blocks", [(torch.float16,), (torch.bfloat16,)])
    run_without_avx512("test_avg_pool2d", "test_reduced_precision_strides_and_wide_rows",
                       [(dt, 3, 2, 1) for dt in (torch.float16, torch.bfloat16)] + [(torch.bfloat16, 2, 2, 0)])
    run_without_avx512("test_avg_pool2d", "test_grid_vs_torch_and_reference", [(torch.contiguous_format,)])
    run_without_avx512("test_avg_pool2d", "test_large_nhwc_outputs_stream", [(torch.float32, 260)])


@pytest.mark.parametrize("dtype,hw", [(torch.float32, 260), (torch.bfloat16, 370)])
def test_large_nhwc_outputs_stream(dtype, hw):
    """NHWC outputs of 16 MiB and more are written with non-temporal stores: the same bits as the NCHW kernel
    (and as torch's for float), twice in a row into a reused buffer, padding and channel tail included."""
    # 72: a tail of 8 channels after the streamed block of 64 (float32 without AVX-512: one run of 72 channels)
    for C in (64, 72):
        x = torch.randn(1, C, hw, hw).to(dtype)
        xl = x.contiguous(memory_format=torch.channels_last)
        expected = P.avg_pool2d(x, 2, 1, 1, False, False)
        assert expected.numel() * expected.element_size() >= 16 << 20
        for _ in range(2):
            a = P.avg_pool2d(xl, 2, 1, 1, False, False)
            assert torch.equal(a, expected) and a.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            assert torch.equal(a, F.avg_pool2d(xl, 2, 1, 1, False, False))


# --- backward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS)
def test_backward_vs_torch_and_reference(cfg):
    k, s, p, ceil = cfg
    for cip, div in ((True, None), (False, None), (True, 3), (False, -2)):
        base = torch.randn(2, 3, 11, 9)
        grads = []
        for dtype, layout in itertools.product((torch.float32, torch.float64), LAYOUTS):
            x1 = base.to(dtype).clone().contiguous(memory_format=layout).requires_grad_()
            x2 = base.to(dtype).clone().contiguous(memory_format=layout).requires_grad_()
            y1 = P.avg_pool2d(x1, k, s, p, ceil, cip, div)
            g = torch.randn(y1.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            y1.backward(g)
            F.avg_pool2d(x2, k, s, p, ceil, cip, div).backward(g)
            assert torch.equal(x1.grad, x2.grad), (cfg, cip, div, dtype, layout)
            assert_same_layout(x1.grad, x2.grad)
            grads.append(x1.grad)
            if dtype == torch.float64:
                expected = ref.avg_pool2d_backward(g, base.shape, pair(k), pair(s), pair(p), ceil, cip, div)
                torch.testing.assert_close(x1.grad, expected, rtol=1e-14, atol=1e-14)
        assert torch.equal(grads[0], grads[1]) and torch.equal(grads[2], grads[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_backward_of_column_pairs(dtype):
    """NCHW column windows (2 ow, 2 ow + 1) take their own loop: odd widths leave a last column no window reads,
    ceil_mode clips the last window (the general loop), and adaptive 2:1 pooling has the same pairs."""
    for W, ceil in itertools.product((2, 9, 16, 31, 40), (False, True)):
        x = torch.randn(2, 3, 6, W).to(dtype).requires_grad_()
        xt = x.detach().float().requires_grad_()
        y = P.avg_pool2d(x, 2, 2, 0, ceil)
        g = torch.randn(y.shape).to(dtype)
        (gx,) = torch.autograd.grad(y, x, g)
        (gt,) = torch.autograd.grad(F.avg_pool2d(xt, 2, 2, 0, ceil), xt, g.float())
        assert torch.equal(gx, gt.to(dtype)), (W, ceil)
    x = torch.randn(2, 3, 8, 14).to(dtype).requires_grad_()
    xt = x.detach().float().requires_grad_()
    g = torch.randn(2, 3, 4, 7).to(dtype)
    (gx,) = torch.autograd.grad(P.adaptive_avg_pool2d(x, (4, 7)), x, g)
    (gt,) = torch.autograd.grad(F.adaptive_avg_pool2d(xt, (4, 7)), xt, g.float())
    assert torch.equal(gx, gt.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_of_stride2_phases(dtype):
    """NCHW stride-2 column windows of adjacent taps: the run of columns whose covering outputs are regular is
    gathered eight column pairs at a time, even and odd columns apart; the columns around it one by one. torch's
    float gradient (rounded once for bfloat16), for widths with and without a part block and clipped windows."""
    for (k, p), W, ceil, cip in itertools.product([(3, 1), (4, 1), (5, 2), (3, 0)], (31, 32, 45, 100), (False, True),
                                                  (True, False)):
        x = torch.randn(2, 2, 5, W).to(dtype).requires_grad_()
        xt = x.detach().float().requires_grad_()
        y = P.avg_pool2d(x, k, 2, p, ceil, cip)
        g = torch.randn(y.shape).to(dtype)
        (gx,) = torch.autograd.grad(y, x, g)
        (gt,) = torch.autograd.grad(F.avg_pool2d(xt, k, 2, p, ceil, cip), xt, g.float())
        assert torch.equal(gx, gt.to(dtype)), (k, p, W, ceil, cip)


@pytest.mark.parametrize("args", [(3, 2, 1, True, True, None), (3, 2, 1, True, False, None), (2, 1, 1, False, True, -2)])
def test_gradcheck_and_gradgradcheck(args):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda t: P.avg_pool2d(t, *args)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_double_backward_is_avg_pool_of_ggi():
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    y = P.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    g = torch.randn_like(y, requires_grad=True)
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    gg = torch.randn_like(gx)
    (ggo,) = torch.autograd.grad(gx, g, gg)
    assert torch.equal(ggo, P.avg_pool2d(gg, 3, 2, 1, ceil_mode=True))


# --- registration, compile ---------------------------------------------------------------------

def _opcheck_samples():
    x = torch.randn(2, 3, 9, 8)
    yield ops.avg_pool2d, (x, [3], [2], [1], False, True, None)
    yield ops.avg_pool2d, (x.contiguous(memory_format=torch.channels_last).requires_grad_(), [2, 3], [], [1, 0], True, False, None)
    yield ops.avg_pool2d, (x[0].double().requires_grad_(), [3], [1], [1], True, True, -2)
    g = torch.randn(2, 3, 5, 4)
    yield ops._avg_pool2d_backward, (g, list(x.shape), [3], [2], [1], False, True, None)
    yield ops._avg_pool2d_backward, (g.double().requires_grad_(), list(x.shape), [3], [2], [1], False, False, 3)


@pytest.mark.parametrize("op,args", list(_opcheck_samples()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), poolops.nn.AvgPool2d(3, 2, 1, ceil_mode=True))
    x = torch.randn(2, 3, 12, 12)
    assert_compiled_matches_eager(net, x)


# --- CUDA --------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_torch_cuda_and_cpu(dtype, layout):
    for (k, s, p, ceil), cip, div in itertools.product(CONFIGS, (True, False), (None, -2)):
        x = torch.randn(2, 19, 13, 11).to(dtype).contiguous(memory_format=layout)
        xc = x.cuda().requires_grad_()
        a, b = P.avg_pool2d(xc, k, s, p, ceil, cip, div), F.avg_pool2d(xc, k, s, p, ceil, cip, div)
        exact = dtype in (torch.float32, torch.float64)
        torch.testing.assert_close(a, b, rtol=0 if exact else 1e-2, atol=0 if exact else 1e-2)
        assert_same_layout(a, b)
        assert torch.equal(a.cpu(), P.avg_pool2d(x, k, s, p, ceil, cip, div))
        g = torch.randn_like(a)
        (mine,) = torch.autograd.grad(a, xc, g)
        (theirs,) = torch.autograd.grad(b, xc, g)
        torch.testing.assert_close(mine, theirs, rtol=1e-5 if exact else 1e-2, atol=1e-6 if exact else 1e-2)


@needs_cuda
def test_cuda_backward_deterministic_and_empty():
    x = torch.randn(4, 16, 32, 32, device="cuda", requires_grad=True)
    g = torch.randn(4, 16, 16, 16, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(P.avg_pool2d(x, 3, 2, 1), x, g)[0] for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert P.avg_pool2d(torch.randn(0, 8, 20, 20, device="cuda"), 2).shape == (0, 8, 10, 10)
