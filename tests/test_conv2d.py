import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import poolops
import poolops.functional as P
from poolops import _reference as ref

from common import assert_compiled_matches_eager, needs_cuda, run_in_fresh_process, run_without_avx512

ops = torch.ops.poolops

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12),
       torch.bfloat16: dict(rtol=2e-2, atol=5e-2)}


def make(n, c, h, w, oc, groups, k, dtype=torch.float64, layout=torch.contiguous_format, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, c, h, w, generator=g).to(dtype).contiguous(memory_format=layout)
    wt = (torch.randn(oc, c // groups, kh, kw, generator=g) / (c // groups * kh * kw) ** 0.5).to(dtype)
    b = torch.randn(oc, generator=g).to(dtype) if bias else None
    return x, wt, b


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def outcome(fn):
    try:
        return fn()
    except (RuntimeError, ValueError, TypeError) as e:
        return type(e)


# --- F.1 shapes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("H,k,s,p,d", [(7, 3, 2, 1, 1), (8, 3, 2, 1, 1), (8, 2, 3, 0, 1), (9, 3, 2, 0, 2), (5, 5, 2, 2, 1),
                                       (6, 3, 2, 5, 1)])
def test_named_shapes(H, k, s, p, d):
    x, w, b = make(2, 4, H, H + 1, 6, 1, k)
    assert P.conv2d(x, w, b, s, p, d).shape == F.conv2d(x, w, b, s, p, d).shape


def test_shape_sweep_matches_torch_including_errors():
    """Every (L, k, s, p, d) in a small grid: same shape and values, or the same error type."""
    checked = 0
    for L, k, s, p, d in itertools.product(range(1, 9), range(1, 4), range(1, 4), range(0, 3), range(1, 3)):
        x, w, b = make(1, 2, L, 3, 3, 1, (k, 1))
        mine = outcome(lambda: P.conv2d(x, w, b, (s, 1), (p, 0), (d, 1)))
        theirs = outcome(lambda: F.conv2d(x, w, b, (s, 1), (p, 0), (d, 1)))
        if isinstance(theirs, type):
            assert mine is theirs, (L, k, s, p, d)
            continue
        torch.testing.assert_close(mine, theirs, **TOL[torch.float64])
        checked += 1
    assert checked > 200


# --- F.2 values ---------------------------------------------------------------------------------

# (C, OC, groups, kernel, stride, padding, dilation)
GRID = [
    (4, 6, 1, 3, 2, 1, 1), (4, 6, 2, 3, 2, 1, 1), (6, 6, 6, 3, 2, 1, 1), (4, 8, 4, 3, 2, 1, 2), (6, 8, 1, 1, 2, 0, 1),
    (6, 8, 1, 1, 1, 0, 1), (5, 5, 5, 3, 1, 1, 1), (3, 5, 1, 2, 3, 0, 1), (4, 4, 4, 5, 2, 2, 1), (4, 6, 2, (3, 2), (2, 3), (1, 0), (2, 1)),
    (8, 16, 8, 3, 2, 1, 1), (6, 6, 3, 3, 3, 4, 1), (2, 4, 1, 4, 2, 1, 3), (17, 17, 17, 3, 2, 1, 1),
    (3, 5, 1, 3, 2, 4, 1), (3, 5, 1, (2, 4), (1, 3), (0, 3), 1),  # windows wholly or partly in the padding
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_values_vs_torch_and_reference(dtype, layout):
    for cfg, bias in itertools.product(GRID, (True, False)):
        C, OC, groups, k, s, p, d = cfg
        x, w, b = make(2, C, 11, 10, OC, groups, k, dtype, layout, bias)
        y = P.conv2d(x, w, b, s, p, d, groups)
        yt = F.conv2d(x, w, b, s, p, d, groups)
        assert y.shape == yt.shape and y.dtype == yt.dtype
        assert y.is_contiguous(memory_format=layout), cfg
        torch.testing.assert_close(y, yt, **TOL[dtype], msg=str(cfg))
        if dtype != torch.bfloat16:
            r = ref.conv2d(x, w, b, pair(s), pair(p), pair(d), groups)
            torch.testing.assert_close(y.double(), r, **TOL[dtype], msg=str(cfg))


def test_depthwise_nhwc_tiles_without_avx512():
    """POOLOPS_AVX512=0 (as on an AVX2-only CPU): the eight-float tiles take every channel block."""
    run_without_avx512("test_conv2d", "test_depthwise_nhwc_tiles_match_nchw_bits",
                       [(torch.float32,), (torch.bfloat16,), (torch.float16,)])
    run_without_avx512("test_conv2d", "test_depthwise_nhwc_input_gradient_channel_blocks",
                       [(torch.float32,), (torch.bfloat16,)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_stride2_columns_of_every_row_width(dtype):
    """NCHW im2col copies every other input column a register at a time, the last register reaching back:
    output widths 1 to 40 take every split between registers and the scalar tail."""
    for OW in range(1, 41):
        x, w, b = make(2, 3, 5, 2 * OW + 1, 4, 1, 3, torch.float32, seed=OW)
        x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
        y = P.conv2d(x, w, b, 2, 1)
        assert y.shape[-1] == OW + 1
        yt = F.conv2d(x.float(), w.float(), b.float(), 2, 1)
        torch.testing.assert_close(y.float(), yt, **(TOL[torch.float32] if dtype == torch.float32 else
                                                     dict(rtol=1e-2, atol=2e-2)), msg=str(OW))


def test_layout_follows_torch():
    """channels_last out when the input or the weight is channels_last."""
    x, w, b = make(2, 4, 9, 9, 6, 1, 3, torch.float32)
    xc, wc = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    for a, ww in [(x, w), (xc, w), (x, wc), (xc, wc)]:
        assert P.conv2d(a, ww, b, 2, 1).stride() == F.conv2d(a, ww, b, 2, 1).stride()


def test_unbatched_and_noncontiguous_inputs():
    x, w, b = make(1, 4, 9, 8, 6, 2, 3)
    torch.testing.assert_close(P.conv2d(x[0], w, b, 2, 1, 1, 2), F.conv2d(x[0], w, b, 2, 1, 1, 2))
    xt = make(2, 4, 8, 9, 6, 1, 3)[0].transpose(2, 3)
    w1 = make(1, 4, 3, 3, 6, 1, 3)[1]
    torch.testing.assert_close(P.conv2d(xt, w1, None, 2), F.conv2d(xt, w1, None, 2))
    torch.testing.assert_close(P.conv2d(xt[:, ::2], w1[:, ::2], None, 2), F.conv2d(xt[:, ::2], w1[:, ::2], None, 2))


def test_integer_and_empty_inputs():
    x = torch.randint(-3, 4, (2, 4, 7, 7))
    w = torch.randint(-3, 4, (6, 4, 3, 3))
    assert torch.equal(P.conv2d(x, w, None, 2, 1), F.conv2d(x, w, None, 2, 1))
    x, w, b = make(0, 4, 9, 9, 6, 1, 3)
    assert P.conv2d(x, w, b, 2).shape == F.conv2d(x, w, b, 2).shape == (0, 6, 4, 4)
    # C == 0: poolops returns the bias broadcast over (N, OC, OH, OW); torch's
    # "Empty" backend returns a tensor with 0 channels instead.
    x, w, b = make(2, 0, 5, 5, 3, 1, 3)
    torch.testing.assert_close(P.conv2d(x, w, b), b.view(1, 3, 1, 1).expand(2, 3, 3, 3))


def test_padding_strings():
    x, w, b = make(2, 4, 9, 10, 6, 1, 3)
    torch.testing.assert_close(P.conv2d(x, w, b, padding="valid"), F.conv2d(x, w, b, padding="valid"))
    for k, d in [(3, 1), (2, 1), (4, 1), (2, 2), ((2, 3), (1, 2)), ((4, 1), (3, 1))]:
        x, w, b = make(2, 4, 9, 10, 6, 1, k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = P.conv2d(x, w, b, 1, "same", d)
            yt = F.conv2d(x, w, b, 1, "same", d)
        assert y.shape[-2:] == x.shape[-2:]
        torch.testing.assert_close(y, yt, **TOL[torch.float64])
    # An odd total is padded inside the kernel (no copy), so poolops does not warn as torch does.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.conv2d(x, make(1, 4, 2, 2, 6, 1, 2)[1], None, 1, "same")
    x.requires_grad_()
    w = make(1, 4, 2, 2, 6, 1, 2)[1].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.autograd.gradcheck(lambda a, ww: P.conv2d(a, ww, None, 1, "same"), (x[:1, :, :5, :5], w))


def test_avg_pool_identity():
    """avg_pool 2x2 stride 2 is a depthwise conv with a 2x2 stride-2 kernel of weights 1/4."""
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 5, 10, 9).contiguous(memory_format=layout)
        w = torch.full((5, 1, 2, 2), 0.25)
        torch.testing.assert_close(P.conv2d(x, w, None, 2, groups=5), F.avg_pool2d(x, 2, 2), rtol=1e-6, atol=1e-6)


# (C, kernel, stride, padding, dilation, W): channels 8/16-lane tiles, 8-lane tiles, per-pixel tails and
# channels under 8; rows with 0-3 outputs left past the 4-output tiles, and rows with no inner outputs; the
# 32-channel rows tiles (kernel width 3 or 5, stride 1 or 2, dilation 1) with and without channels after them.
DEPTHWISE_TILES = [
    (96, 3, 2, 1, 1, 37), (24, 3, 1, 1, 1, 29), (40, 3, 2, 1, 1, 24), (33, 3, 2, 1, 1, 31), (7, 3, 2, 1, 1, 30),
    (16, 5, 2, 4, 2, 35), (19, (3, 2), (2, 3), (1, 0), (2, 1), 40), (8, 3, 3, 0, 1, 26), (16, 3, 2, 1, 1, 4),
    (24, 4, 2, (0, 3), 1, 22), (64, 3, 1, 1, 1, 29), (48, 5, 2, 2, 1, 33), (32, 5, 1, (1, 2), 1, 30),
    (64, (2, 3), (3, 2), (0, 1), 1, 27),
]


@pytest.mark.parametrize("dtype,C", [(torch.float32, 32), (torch.bfloat16, 96), (torch.bfloat16, 40)])
def test_large_depthwise_nhwc_outputs_stream(dtype, C):
    """Channels-last depthwise outputs of 16 MiB and more go out of the AVX-512 tiles with non-temporal stores
    where every pixel is 64-byte aligned (not for 40 bfloat16 channels): the NCHW kernel's bits, twice in a row
    into a reused buffer, bias and the border pixels included."""
    x, w, b = make(1, C, 740 if dtype == torch.bfloat16 and C == 40 else 370, 370, C, C, 3, torch.float32,
                   bias=True, seed=C)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    expected = P.conv2d(x, w, b, 1, 1, 1, C)
    assert expected.numel() * expected.element_size() >= 16 << 20
    xl = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        y = P.conv2d(xl, w, b, 1, 1, 1, C)
        assert torch.equal(y, expected) and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_depthwise_nhwc_tiles_match_nchw_bits(dtype):
    """The channels-last depthwise forward sums bias then the in-range taps in row-major order, as the NCHW
    kernel does (which also adds the zero padding, exactly): same bits, whatever the thread split."""
    before = torch.get_num_threads()
    try:
        for (C, k, s, p, d, W), bias, threads in itertools.product(DEPTHWISE_TILES, (True, False), (1, 2, 3)):
            torch.set_num_threads(threads)
            x, w, b = make(3, C, 19, W, C, C, k, torch.float32, bias=bias, seed=C + W)
            x, w, b = x.to(dtype), w.to(dtype), b.to(dtype) if bias else None
            y = P.conv2d(x.contiguous(memory_format=torch.channels_last), w, b, s, p, d, C)
            assert y.is_contiguous(memory_format=torch.channels_last)
            y_nchw = P.conv2d(x, w, b, s, p, d, C)
            cfg = (C, k, s, p, d, W, bias, threads)
            assert torch.equal(y.contiguous().view(torch.int16 if dtype != torch.float32 else torch.int32),
                               y_nchw.view(torch.int16 if dtype != torch.float32 else torch.int32)), cfg
            r = ref.conv2d(x.double(), w.double(), b.double() if bias else None, pair(s), pair(p), pair(d), C)
            torch.testing.assert_close(y.double(), r, **(TOL[torch.float32] if dtype == torch.float32 else
                                                         dict(rtol=1e-2, atol=2e-2)), msg=str(cfg))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_depthwise_nhwc_input_gradient_channel_blocks(dtype):
    """The channels-last depthwise grad_input sums each input pixel's readers in 32-channel tiles (AVX-512),
    then register blocks and the tail: a float64 reference's values, whatever C, rows and columns no output
    reads included (stride above the kernel), and the channels-last layout."""
    for (C, k, s, p, d, W) in DEPTHWISE_TILES + [(40, 2, 3, 0, 1, 20), (96, 3, 2, 1, 1, 6)]:
        x, w, _ = make(2, C, 13, W, C, C, k, torch.float32, bias=False, seed=C + W)
        go = torch.randn_like(F.conv2d(x, w, None, s, p, d, C))
        x, w, go = x.to(dtype), w.to(dtype), go.to(dtype)
        gi = ops._conv2d_backward_input(go.contiguous(memory_format=torch.channels_last), w, list(x.shape),
                                        list(pair(s)), list(pair(p)), list(pair(d)), C)
        assert gi.is_contiguous(memory_format=torch.channels_last) and gi.dtype == dtype
        xd = x.double().requires_grad_()
        want = torch.autograd.grad(F.conv2d(xd, w.double(), None, s, p, d, C), xd, go.double())[0]
        torch.testing.assert_close(gi.double(), want, **(TOL[torch.float32] if dtype == torch.float32 else
                                                         dict(rtol=1e-2, atol=2e-2)), msg=str((C, k, s, p, d, W)))


# --- F.3 errors ---------------------------------------------------------------------------------

ERRORS = [
    (dict(padding="foo"), RuntimeError, "Invalid padding string: 'foo'"),
    (dict(stride=0), RuntimeError, "non-positive stride is not supported"),
    (dict(padding=-1), RuntimeError, "negative padding is not supported"),
    (dict(dilation=0), RuntimeError, r"dilation should be greater than zero, but got \[0, 0\]"),
    (dict(groups=0), RuntimeError, "non-positive groups is not supported"),
    (dict(groups=2), RuntimeError, r"Given groups=2, weight of size \[4, 4, 3, 3\], expected input\[1, 4, 9, 9\] to "
     r"have 8 channels, but got 4 channels instead"),
    (dict(groups=3), RuntimeError, "expected weight to be divisible by 3 at dimension 0"),
    (dict(stride=(1, 2, 3)), RuntimeError, "expected stride to be a single integer value or a list of 2 values"),
    (dict(padding=(1, 2, 3)), RuntimeError, "expected padding to be a single integer value or a list of 2 values"),
    (dict(stride=1.5), TypeError, r"conv2d\(\)"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", ERRORS)
def test_errors_match_torch(kwargs, exc, pattern):
    x, w = torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3)
    with pytest.raises(exc, match=pattern):
        P.conv2d(x, w, **kwargs)
    with pytest.raises(exc, match=pattern):
        F.conv2d(x, w, **kwargs)


@pytest.mark.parametrize("args,pattern", [
    ((torch.randn(1, 4, 9, 9), torch.randn(4, 4, 12, 12)),
     r"Calculated padded input size per channel: \(9 x 9\). Kernel size: \(12 x 12\). Kernel size can't be greater "
     "than actual input size"),
    ((torch.randn(1, 4, 9, 9).double(), torch.randn(4, 4, 3, 3)), "expected scalar type Double but found Float"),
    ((torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3).double()), "expected scalar type Float but found Double"),
    ((torch.randn(9, 9), torch.randn(4, 4, 3, 3)),
     r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, but got input of size: \[9, 9\]"),
    ((torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3), torch.zeros(5)),
     r"expected bias to be 1-dimensional with 4 elements, but got bias of size \[5\] instead"),
    ((torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3), torch.zeros(4).double()),
     r"Input type \(float\) and bias type \(double\) should be the same"),
    ((torch.randn(1, 4, 9, 9), torch.randn(4, 1, 3, 3), None, 1, 0, 1, 8), "expected weight to be at least 8"),
])
def test_tensor_errors_match_torch(args, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        P.conv2d(*args)
    with pytest.raises(RuntimeError, match=pattern):
        F.conv2d(*args)


def test_errors_are_raised_under_fake_tensors_too():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3)
        assert P.conv2d(x, w, None, 2, 1).shape == (1, 4, 5, 5)
        with pytest.raises(RuntimeError, match="expected input"):
            P.conv2d(x, w, groups=2)
        with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
            P.conv2d(x, torch.randn(4, 4, 12, 12))
        with pytest.raises(RuntimeError, match="expected scalar type Float but found Double"):
            P.conv2d(x, w.double())
        with pytest.raises(RuntimeError, match=r"Input type \(float\) and bias type \(double\)"):
            P.conv2d(x, w, torch.zeros(4, dtype=torch.float64))


# --- F.5 backward -------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_vs_torch(layout, dtype):
    for C, OC, groups, k, s, p, d in GRID:
        x, w, b = make(2, C, 11, 10, OC, groups, k, dtype, layout)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        leaves_t = [t.clone().requires_grad_() for t in (x, w, b)]
        y = P.conv2d(*leaves, s, p, d, groups)
        yt = F.conv2d(*leaves_t, s, p, d, groups)
        go = torch.randn_like(yt)
        got = torch.autograd.grad(y, leaves, go)
        want = torch.autograd.grad(yt, leaves_t, go)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, **TOL[dtype], msg=str((C, OC, groups, k, s, p, d)))
        assert got[0].is_contiguous(memory_format=layout)


def test_dense_path_without_the_avx512_gemm():
    """POOLOPS_GEMM=0 (as on a CPU without AVX-512): the dense path runs im2col and at::mm (channels-last too,
    instead of the indirect GEMM), with the same results."""
    code = (
        "import torch, torch.nn.functional as F, poolops.functional as P\n"
        "torch.manual_seed(0)\n"
        "for fmt in (torch.contiguous_format, torch.channels_last):\n"
        "  for groups in (1, 2):\n"
        "    x = torch.randn(2, 20, 9, 11).contiguous(memory_format=fmt).requires_grad_()\n"
        "    w = torch.randn(30, 20 // groups, 3, 3).requires_grad_(); b = torch.randn(30).requires_grad_()\n"
        "    y, yt = P.conv2d(x, w, b, 2, 1, 1, groups), F.conv2d(x, w, b, 2, 1, 1, groups)\n"
        "    torch.testing.assert_close(y, yt, atol=1e-4, rtol=1e-4)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, e in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(yt, (x, w, b), g)):\n"
        "        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)\n"
        "print('ok')\n")
    run_in_fresh_process(code, timeout=300, POOLOPS_GEMM="0")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_im2col_gemm_rounds_once(dtype):
    """Half and bfloat16 forwards through im2col columns (NCHW, groups=2, and every layout where the indirect GEMM
    does not run) take a float32 GEMM where the CPU has no AVX512-BF16 (at::mm's own fallback there was up to 57x
    slower): the float64 reference rounded once, for all but near-ties, bias included; the weight gradient matches
    torch's."""
    cases = [(torch.contiguous_format, 1, 3, 2, 1), (torch.channels_last, 1, 3, 2, 1), (torch.channels_last, 2, 3, 1, 1),
             (torch.contiguous_format, 1, 1, 2, 0), (torch.channels_last, 1, 1, 1, 0)]
    for layout, groups, k, s, p in cases:
        x, w, b = make(4, 64, 12, 11, 48, groups, k, dtype, layout, seed=k + s)
        y = ops.conv2d(x, w, b, pair(s), pair(p), [1, 1], groups)
        want = ref.conv2d(x.double(), w.double(), b.double(), pair(s), pair(p), [1, 1], groups)
        rounded = want.to(dtype)
        assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
        assert (y == rounded).double().mean() > 0.99, (layout, groups, k, s, p)
        bound = rounded.double().abs() * 2.0 ** -7 + 1e-5 * want.abs().max()
        assert ((y.double() - want).abs() <= bound).all(), (layout, groups, k, s, p)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
        go = go.contiguous(memory_format=layout)
        gw = ops._conv2d_backward_weight(go, x, list(w.shape), pair(s), pair(p), [1, 1], groups)
        gw_ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, go.double(), s, p, 1, groups)
        torch.testing.assert_close(gw.double(), gw_ref, atol=0.1, rtol=2e-2)


def test_reduced_precision_gemm_without_avx512():
    """POOLOPS_AVX512=0 (as on an AVX2-only CPU): the float32 GEMM route on any CPU."""
    run_without_avx512("test_conv2d", "test_reduced_precision_im2col_gemm_rounds_once",
                       [(torch.bfloat16,), (torch.float16,)])


def test_backward_identities_and_uncovered_rows():
    """grad_input is conv_transpose2d with the computed output_padding; rows the forward never reads get 0."""
    for C, OC, groups, k, s, p, d in [(4, 6, 2, 3, 3, 0, 2), (4, 4, 4, 3, 2, 0, 1), (4, 6, 1, 2, 3, 0, 1)]:
        x, w, _ = make(2, C, 12, 11, OC, groups, k)
        go = torch.randn_like(F.conv2d(x, w, None, s, p, d, groups))
        gi = ops._conv2d_backward_input(go, w, list(x.shape), [s, s], [p, p], [d, d], groups)
        op = [x.shape[i] + 2 * p - d * (w.shape[i] - 1) - 1 - (go.shape[i] - 1) * s for i in (2, 3)]
        torch.testing.assert_close(gi, F.conv_transpose2d(go, w, None, s, p, op, groups, d))
        gw = ops._conv2d_backward_weight(go, x, list(w.shape), [s, s], [p, p], [d, d], groups)
        torch.testing.assert_close(gw, torch.nn.grad.conv2d_weight(x, w.shape, go, s, p, d, groups))
        if op[0] > 0:
            assert gi[:, :, -op[0]:].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_col2im_channel_blocks(dtype):
    """Channels-last grad_input gathers each pixel's column entries 32 and 8 channels at a time, then the rest
    one by one: group widths 8, 40 (32 + 8) and 70 (32 + 32 + 6) give conv_transpose2d's result. (float16 and
    groups=2 take col2im; float32 and bfloat16 with one group take the indirect GEMM's column panels.)"""
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for C, groups in [(8, 1), (40, 1), (70, 1), (80, 2)]:
        x, w, _ = make(2, C, 9, 10, 6 * groups, groups, 3, dtype, torch.channels_last)
        go = torch.randn(2, 6 * groups, 5, 5, generator=torch.Generator().manual_seed(C)).to(dtype)
        go = go.contiguous(memory_format=torch.channels_last)
        gi = ops._conv2d_backward_input(go, w, list(x.shape), [2, 2], [1, 1], [1, 1], groups)
        expected = F.conv_transpose2d(go.double(), w.double(), None, 2, 1, (0, 1), groups)
        assert gi.is_contiguous(memory_format=torch.channels_last) and gi.dtype == dtype
        torch.testing.assert_close(gi.double(), expected, **tol)


# (C, OC, kernel, stride, padding, dilation): rows not a multiple of the 6-row tile, column panels of 64 with
# tails, odd K (bfloat16 pairs with a half pair), a stride above the kernel (input pixels no tap reads), dilation,
# windows in the padding, 1x1 stride 2; for the float32 weight gradient's GEMM (B's rows gathered, 32-column strips)
# channel counts that split strips between taps (70, 10, 6) and more output channels than one 168-row block (200).
INDIRECT = [(64, 128, 3, 2, 1, 1), (3, 10, 3, 2, 1, 1), (6, 70, 3, 2, 1, 1), (70, 6, 3, 2, 1, 1), (8, 16, 3, 1, 1, 1),
            (4, 5, 2, 3, 0, 1), (10, 33, 3, 2, 2, 2), (2, 3, 5, 2, 2, 1), (16, 8, 1, 2, 0, 1), (4, 4, 3, 4, 1, 1),
            (6, 8, (3, 2), (2, 3), (1, 0), (2, 1)), (10, 200, 3, 2, 1, 1)]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indirect_gemm(dtype, layout):
    """Dense conv2d (one group) gathers each output's taps through pointers; grad_input runs the same GEMM one
    stride phase at a time; pixels inside the image take precomputed tap offsets (the wider images have such
    pixels). NCHW tensors go through 8x8-block transposes (channel and pixel counts with and without tails) where
    their im2col columns would be at least as large as the input (else they take im2col, whose bfloat16 grad_input
    adds rounded columns). Against the float64 reference on the same inputs: float32 within 1e-5, bfloat16 the
    reference rounded once (the float sum rounds to the same bfloat16 but for near-ties). The weight gradient is
    one GEMM over all images, its B rows gathered from the input's pixels: float32 within 1e-5 of its largest
    element, bfloat16 (float sums with AVX512-BF16) as the other bfloat16 results."""
    for (C, OC, k, s, p, d), (H, W) in itertools.product(INDIRECT, [(13, 11), (30, 29)]):
        x, w, b = make(3, C, H, W, OC, 1, k, dtype, layout, seed=C + OC)
        y = ops.conv2d(x, w, b, pair(s), pair(p), pair(d), 1)
        assert y.is_contiguous(memory_format=layout)
        r = ref.conv2d(x.double(), w.double(), b.double(), pair(s), pair(p), pair(d), 1)
        go = torch.randn(r.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        go = go.contiguous(memory_format=layout)
        gi = ops._conv2d_backward_input(go, w, list(x.shape), pair(s), pair(p), pair(d), 1)
        assert gi.is_contiguous(memory_format=layout)
        op = [x.shape[i] + 2 * pair(p)[i - 2] - pair(d)[i - 2] * (w.shape[i] - 1) - 1 - (go.shape[i] - 1) * pair(s)[i - 2]
              for i in (2, 3)]
        gr = F.conv_transpose2d(go.double(), w.double(), None, s, p, op, 1, d)
        indirect = torch.ops.poolops._cpu_indirect_gemm(dtype) and (
            layout == torch.channels_last or w.shape[2] * w.shape[3] * r.shape[2] * r.shape[3] >= H * W)
        gw = ops._conv2d_backward_weight(go, x, list(w.shape), pair(s), pair(p), pair(d), 1)
        gwr = torch.nn.grad.conv2d_weight(x.double(), w.shape, go.double(), s, p, d)
        assert gw.shape == w.shape and gw.is_contiguous() and gw.dtype == dtype
        if dtype == torch.float32 or not indirect:  # the other paths' bfloat16 sums of parts: within 2 ulp of the max
            atol = (1e-5 if dtype == torch.float32 else 2.0 ** -6) * gwr.abs().max().item()
            torch.testing.assert_close(gw.double(), gwr, rtol=0, atol=atol, msg=str((C, OC, k, s, p, d)))
        for got, want in ((y, r), (gi, gr)) + (((gw, gwr),) if dtype == torch.bfloat16 and indirect else ()):
            if not indirect:
                torch.testing.assert_close(got, want.to(dtype), **TOL[dtype], msg=str((C, OC, k, s, p, d)))
                continue
            if dtype == torch.float32:
                torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=str((C, OC, k, s, p, d)))
                continue
            rounded = want.to(dtype)
            assert (got == rounded).double().mean() > 0.99, (C, OC, k, s, p, d)
            # Within a bfloat16 ulp, plus the float sum's error where terms cancel.
            bound = rounded.double().abs() * 2.0 ** -7 + 1e-5 * want.abs().max()
            assert ((got.double() - want).abs() <= bound).all(), (C, OC, k, s, p, d)


# (layout, images, channels, size, kernel, stride, padding, bound): a channels-last run of all 32 images in one GEMM
# (and NCHW through channels-last copies), channels-last runs of 3 of 16 images, NCHW per-image GEMMs (1x1 stride 2).
WEIGHT_SUMS = [(torch.channels_last, 32, 16, 16, 3, 2, 1, 1.0), (torch.contiguous_format, 32, 16, 16, 3, 2, 1, 1.0),
               (torch.channels_last, 16, 64, 32, 3, 1, 1, 2.0), (torch.contiguous_format, 32, 16, 16, 1, 2, 0, 2.5)]


@pytest.mark.parametrize("layout,N,C,size,k,s,p,bound", WEIGHT_SUMS)
def test_bfloat16_weight_gradient_is_summed_in_float(layout, N, C, size, k, s, p, bound):
    """A bfloat16 weight gradient adds its parts (runs of images, or images) in float and rounds at the end: its
    largest error, relative to the largest gradient, is within `bound` times that of rounding the exact gradient
    (one run: the same bfloat16 but for near-ties). A bfloat16 running sum of the parts had 2.6 times (the runs)
    to 4.9 (the images)."""
    x = make(N, C, size, size, 32, 1, k, torch.bfloat16, layout, bias=False)[0]
    out = (size + 2 * p - k) // s + 1
    go = torch.randn(N, 32, out, out, generator=torch.Generator().manual_seed(10)).to(torch.bfloat16)
    go = go.contiguous(memory_format=layout)
    gw = ops._conv2d_backward_weight(go, x, [32, C, k, k], [s, s], [p, p], [1, 1], 1)
    want = torch.nn.grad.conv2d_weight(x.double(), (32, C, k, k), go.double(), s, p)
    scale = want.abs().max()
    rounding = ((want.to(torch.bfloat16).double() - want).abs().max() / scale).item()
    err = ((gw.double() - want).abs().max() / scale).item()
    assert err <= bound * rounding, (err, rounding)
    if bound == 1.0:
        assert (gw == want.to(torch.bfloat16)).double().mean() > 0.99


def test_backward_is_deterministic():
    for groups, layout in itertools.product((1, 4), (torch.contiguous_format, torch.channels_last)):
        x, w, _ = make(4, 4, 15, 14, 8, groups, 3, torch.float32, layout)
        go = torch.randn_like(F.conv2d(x, w, None, 2, 1, 1, groups))
        runs = [(ops._conv2d_backward_input(go, w, list(x.shape), [2, 2], [1, 1], [1, 1], groups),
                 ops._conv2d_backward_weight(go, x, list(w.shape), [2, 2], [1, 1], [1, 1], groups)) for _ in range(2)]
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("cfg", [(4, 6, 1, 3, 2, 1, 1), (4, 6, 2, 3, 2, 1, 2), (3, 6, 3, 3, 2, 1, 1), (2, 2, 2, (2, 3), (3, 2), (0, 1), 1),
                                 (4, 4, 1, 1, 2, 0, 1)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradcheck_and_gradgradcheck(cfg, layout):
    C, OC, groups, k, s, p, d = cfg
    x, w, b = make(2, C, 7, 6, OC, groups, k, torch.float64, layout)
    args = [t.requires_grad_() for t in (x, w, b)]
    f = lambda a, ww, bb: P.conv2d(a, ww, bb, s, p, d, groups)  # noqa: E731
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


# --- registration, compile ----------------------------------------------------------------------

def _opcheck_samples():
    x, w, b = make(2, 4, 9, 8, 6, 2, 3, torch.float32)
    yield ops.conv2d, (x, w, b, [2, 2], [1, 1], [1, 1], 2)
    yield ops.conv2d, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [2, 1], [0, 1], [1, 2], 2)
    xc = make(2, 4, 9, 8, 4, 4, 3, torch.float64, torch.channels_last)[0].requires_grad_()
    wd = make(2, 4, 9, 8, 8, 4, 3, torch.float64)[1].requires_grad_()
    yield ops.conv2d, (xc, wd, None, [2, 2], [1, 1], [1, 1], 4)
    yield ops.conv2d, (xc, make(2, 4, 9, 8, 5, 1, 1, torch.float64)[1], None, [2, 2], [0, 0], [1, 1], 1)
    go = torch.randn(2, 6, 5, 4)
    yield ops._conv2d_backward_input, (go, w.detach(), list(x.shape), [2, 2], [1, 1], [1, 1], 2)
    yield ops._conv2d_backward_input, (go.double().requires_grad_(), make(1, 4, 1, 1, 6, 2, 3)[1].requires_grad_(),
                                       [2, 4, 9, 8], [2, 2], [1, 1], [1, 1], 2)
    yield ops._conv2d_backward_weight, (go, x.detach(), list(w.shape), [2, 2], [1, 1], [1, 1], 2)
    yield ops._conv2d_backward_weight, (go.double().requires_grad_(),
                                        make(2, 4, 9, 8, 6, 2, 3, torch.float64, torch.channels_last)[0].requires_grad_(),
                                        [6, 2, 3, 3], [2, 2], [1, 1], [1, 1], 2)


@pytest.mark.parametrize("op,args", list(_opcheck_samples()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    torch.manual_seed(0)
    net = torch.nn.Sequential(poolops.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                              poolops.nn.Conv2d(8, 8, 3, 2, 1, groups=8, padding_mode="reflect"),
                              poolops.nn.Conv2d(8, 4, 1, bias=False))
    x = torch.randn(2, 3, 16, 16)
    assert_compiled_matches_eager(net, x)
    f = torch.compile(lambda t, w: P.conv2d(t, w, None, 2, 1), backend="aot_eager", fullgraph=True, dynamic=True)
    w = torch.randn(4, 2, 3, 3)
    for shape in [(1, 2, 8, 8), (3, 2, 11, 7)]:
        t = torch.randn(shape)
        torch.testing.assert_close(f(t, w), F.conv2d(t, w, None, 2, 1))


# --- CUDA ---------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_torch_cuda(layout, dtype):
    for cfg in GRID:
        C, OC, groups, k, s, p, d = cfg
        x, w, b = make(2, C, 11, 10, OC, groups, k, dtype, layout)
        leaves = [t.cuda().requires_grad_() for t in (x, w, b)]
        leaves_t = [t.cuda().requires_grad_() for t in (x, w, b)]
        y = P.conv2d(*leaves, s, p, d, groups)
        yt = F.conv2d(*leaves_t, s, p, d, groups)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else TOL[dtype]
        torch.testing.assert_close(y, yt, **tol, msg=str(cfg))
        go = torch.randn_like(yt)
        for a, e in zip(torch.autograd.grad(y, leaves, go), torch.autograd.grad(yt, leaves_t, go)):
            torch.testing.assert_close(a, e, **tol, msg=str(cfg))


@needs_cuda
def test_cuda_gradgradcheck_deterministic_and_empty():
    x, w, b = make(2, 4, 7, 6, 4, 4, 3, torch.float64)
    args = [t.cuda().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradgradcheck(lambda a, ww, bb: P.conv2d(a, ww, bb, 2, 1, 1, 4), args)
    x, w, b = make(2, 4, 7, 6, 6, 2, 3, torch.float64)
    args = [t.cuda().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradgradcheck(lambda a, ww, bb: P.conv2d(a, ww, bb, 2, 1, 1, 2), args)
    x, w, _ = make(4, 8, 33, 31, 8, 8, 3, torch.float32)
    x, w = x.cuda(), w.cuda()
    go = torch.randn_like(F.conv2d(x, w, None, 2, 1, 1, 8))
    a = [ops._conv2d_backward_weight(go, x, list(w.shape), [2, 2], [1, 1], [1, 1], 8) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert P.conv2d(torch.empty(0, 4, 9, 9, device="cuda"), torch.randn(6, 4, 3, 3, device="cuda")).shape == (0, 6, 7, 7)
