"""Determinism (runs, thread counts), thread safety, and 64-bit index math on
inputs past 2^31 elements (opt-in: POOLOPS_LARGE_TESTS=1, ~6 GB of memory)."""
import os
import threading

import pytest
import torch
import torch.nn.functional as F

import poolops.functional as P

CALLS = {
    "max_pool2d": lambda t: P.max_pool2d(t, 3, 2, 1),
    "max_pool2d_ceil_dilated": lambda t: P.max_pool2d(t, 3, 2, 1, 2, ceil_mode=True),
    "avg_pool2d": lambda t: P.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
    "adaptive_avg_pool2d": lambda t: P.adaptive_avg_pool2d(t, (5, 3)),
    "adaptive_max_pool2d": lambda t: P.adaptive_max_pool2d(t, (5, 3)),
    "global_avg_pool2d": P.global_avg_pool2d,
    "global_max_pool2d": P.global_max_pool2d,
}


def forward_backward(fn, x, seed=0):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype).contiguous(
        memory_format=torch.channels_last if y.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_identical_across_runs_and_thread_counts(name, layout, dtype):
    x = torch.randint(0, 5, (3, 19, 23, 17), generator=torch.Generator().manual_seed(1)).to(dtype)
    x = x.contiguous(memory_format=layout)  # small integers: many ties and exact partial sums would hide nothing
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(dtype) * 0.01
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append(forward_backward(CALLS[name], x))
    finally:
        torch.set_num_threads(before)
    for y, gx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(gx, results[0][1])


def test_concurrent_calls_from_python_threads():
    xs = [torch.randn(2, 16, 20 + i, 18, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    xs = [x.contiguous(memory_format=torch.channels_last) if i % 2 else x for i, x in enumerate(xs)]
    expected = {(name, i): forward_backward(fn, x) for name, fn in CALLS.items() for i, x in enumerate(xs)}
    errors = []

    def work(i):
        try:
            for _ in range(5):
                for name, fn in CALLS.items():
                    y, gx = forward_backward(fn, xs[i])
                    ey, egx = expected[(name, i)]
                    if not (torch.equal(y, ey) and torch.equal(gx, egx)):
                        errors.append((name, i))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


large = pytest.mark.skipif(os.environ.get("POOLOPS_LARGE_TESTS") != "1", reason="set POOLOPS_LARGE_TESTS=1 (needs ~6 GB)")


@large
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_more_than_2_31_elements(layout):
    """An int8 input of 2^31 + 2^17 elements: offsets past 2^31 in both layouts.
    The last rows (addressed beyond 2^31) must match torch on a small slice."""
    H = 2**16 + 2
    x = torch.empty(1, 2, H, 2**14, dtype=torch.int8).contiguous(memory_format=layout)
    assert x.numel() > 2**31
    x.random_(-128, 127, generator=torch.Generator().manual_seed(0))
    y = P.max_pool2d(x, 2)
    tail = x[:, :, -4:, :].contiguous()
    torch.testing.assert_close(y[:, :, -2:, :], F.max_pool2d(tail, 2), rtol=0, atol=0)
    head = x[:, :, :4, :].contiguous()
    torch.testing.assert_close(y[:, :, :2, :], F.max_pool2d(head, 2), rtol=0, atol=0)
    plane = x[:, 1:].to(torch.float16)  # one plane past 2^30 elements, its argmax near the end
    plane[0, 0, -1, -1] = 1000
    m, idx = P.global_max_pool2d(plane, return_indices=True)
    assert m.item() == 1000 and idx.item() == H * 2**14 - 1


OPS = [
    ("max_pool2d_with_indices", lambda x: torch.ops.poolops.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1], [1, 1],
                                                                                     False)),
    ("max_pool2d_with_taps", lambda x: torch.ops.poolops.max_pool2d_with_taps(x, [3, 3], [2, 2], [1, 1], [1, 1],
                                                                               False)),
    ("max_pool2d", lambda x: torch.ops.poolops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
    ("avg_pool2d", lambda x: torch.ops.poolops.avg_pool2d(x, [3, 3], [2, 2], [1, 1], False, False, None, [1, 1])),
    ("adaptive_avg_pool2d", lambda x: torch.ops.poolops.adaptive_avg_pool2d(x, [3, 2])),
    ("global_avg_pool2d", lambda x: torch.ops.poolops.global_avg_pool2d(x)),
    ("adaptive_max_pool2d", lambda x: torch.ops.poolops.adaptive_max_pool2d(x, [3, 2])),
    ("global_max_pool2d", lambda x: torch.ops.poolops.global_max_pool2d(x)),
    ("conv2d", lambda x: torch.ops.poolops.conv2d(x, torch.ones(2, 3, 3, 3, dtype=x.dtype), None, [2, 2], [1, 1],
                                                  [1, 1], 1)),
]


@pytest.mark.parametrize("name,fn", OPS, ids=[n for n, _ in OPS])
def test_autograd_records_only_when_needed(name, fn):
    """The forward ops' autograd (C++): no graph without a gradient to take (an input without requires_grad, or
    no_grad); with one, the argmax outputs take none; a first-order gradient records no graph, create_graph one;
    and the gradient is torch's (max: the argmax's; the inputs have no ties)."""
    x = torch.randperm(2 * 3 * 7 * 6, generator=torch.Generator().manual_seed(0)).double().view(2, 3, 7, 6)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    assert first(fn(x)).grad_fn is None
    xr = x.clone().requires_grad_()
    with torch.no_grad():
        assert first(fn(xr)).grad_fn is None
    out = fn(xr)
    y = first(out)
    assert y.grad_fn is not None and y.requires_grad
    if isinstance(out, tuple):
        assert not out[1].requires_grad and out[1].grad_fn is None
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
    (gx,) = torch.autograd.grad(y, xr, g, retain_graph=True)
    assert gx.grad_fn is None and not gx.requires_grad
    (gx2,) = torch.autograd.grad(y, xr, g, create_graph=True)
    assert gx2.grad_fn is not None
    torch.testing.assert_close(gx2.detach(), gx)
    g = g.detach()
    xt = x.clone().requires_grad_()
    torch_fns = {"max_pool2d_with_indices": lambda t: F.max_pool2d(t, 3, 2, 1),
                 "max_pool2d_with_taps": lambda t: F.max_pool2d(t, 3, 2, 1),
                 "max_pool2d": lambda t: F.max_pool2d(t, 3, 2, 1),
                 "avg_pool2d": lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
                 "adaptive_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, (3, 2)),
                 "global_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, 1),
                 "adaptive_max_pool2d": lambda t: F.adaptive_max_pool2d(t, (3, 2)),
                 "global_max_pool2d": lambda t: F.adaptive_max_pool2d(t, 1),
                 "conv2d": lambda t: F.conv2d(t, torch.ones(2, 3, 3, 3, dtype=t.dtype), None, 2, 1)}
    (want,) = torch.autograd.grad(torch_fns[name](xt), xt, g)
    torch.testing.assert_close(gx, want)


def test_conv2d_autograd_takes_only_the_gradients_asked_for():
    """conv2d's backward computes grad_input, grad_weight and grad_bias only for the inputs that need them."""
    x = torch.randn(2, 3, 6, 5, dtype=torch.double)
    w = torch.randn(4, 3, 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double)
    y = P.conv2d(x, w, b, 1, 1)
    (gw,) = torch.autograd.grad(y.sum(), w)
    torch.testing.assert_close(gw, torch.nn.grad.conv2d_weight(x, w.shape, torch.ones_like(y), 1, 1))
    b.requires_grad_()
    y = P.conv2d(x, w.detach(), b, 1, 1)
    (gb,) = torch.autograd.grad(y.sum(), b)
    torch.testing.assert_close(gb, torch.full_like(b, 2 * 6 * 5.0))
