import os
import subprocess
import sys

import pytest
import torch

needs_cuda = pytest.mark.needs_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def distinct(shape, dtype=torch.float64, device="cpu", seed=0):
    """Values without ties (a scaled permutation), for differentiating a max."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    return (torch.randperm(n, generator=g).to(dtype) / n - 0.5).reshape(shape).to(device)


def specials(shape, seed):
    """float64 small integers (many ties), signed zeros, NaN and -inf at random places, and a first plane
    wholly -inf (there the first in-range tap is the argmax)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).double()
    zero = x == 0
    x[zero] = torch.where(torch.rand(shape, generator=g) < 0.5, 0.0, -0.0).double()[zero]
    r = torch.rand(shape, generator=g)
    x[r < 0.03] = float("nan")
    x[r > 0.97] = float("-inf")
    x[0, 0] = float("-inf")
    return x


def assert_same_layout(actual, expected):
    assert actual.shape == expected.shape
    assert actual.stride() == expected.stride(), (actual.stride(), expected.stride())
    assert actual.dtype == expected.dtype


def assert_compiled_matches_eager(net, x):
    """torch.compile(fullgraph=True, aot_eager) of net: the same output and parameter gradients as eager."""
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), net(x))
    compiled(x).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).sum().backward()
    for a, b in zip(grads, [p.grad for p in net.parameters()]):
        torch.testing.assert_close(a, b)


def run_in_fresh_process(code, timeout=600, **env):
    """Runs code (which prints 'ok' last) in a new Python process with the extra environment variables: the
    kernels read their switches (POOLOPS_AVX512, POOLOPS_GEMM) once per process."""
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def run_without_avx512(module, test, calls):
    """module.test(*args) for each args in calls (tuples of dtypes, numbers and tuples of them) with
    POOLOPS_AVX512=0, as on an AVX2-only CPU."""
    code = (f"import sys, torch; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            f"import {module} as t\n"
            f"for args in {calls!r}:\n"
            f"    t.{test}(*args)\n"
            "print('ok')\n")
    run_in_fresh_process(code, POOLOPS_AVX512="0")
