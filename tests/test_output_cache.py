"""The cache of large CPU output buffers (csrc/output_alloc.cpp): freed outputs of 4 MiB or more are reused
by the next request of their size, so every kernel must write all of its output over stale data."""
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import poolops
import poolops.functional as P

MIB = 1 << 20
W_DW = torch.randn(64, 1, 3, 3, generator=torch.Generator().manual_seed(5)) / 3
W_DENSE = torch.randn(32, 64, 3, 3, generator=torch.Generator().manual_seed(6)) / 24

# (poolops, torch): forward outputs or input gradients of 4 MiB or more on (8, 64, 64, 64) float32 (8 MiB).
CALLS = {
    "max_pool2d": (lambda x: P.max_pool2d(x, 3, 1, 1), lambda x: F.max_pool2d(x, 3, 1, 1)),
    "max_pool2d_2": (lambda x: P.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
    "max_pool2d_with_indices": (lambda x: P.max_pool2d(x, 3, 1, 1, return_indices=True)[0],
                                lambda x: F.max_pool2d(x, 3, 1, 1, return_indices=True)[0]),
    "avg_pool2d": (lambda x: P.avg_pool2d(x, 3, 1, 1), lambda x: F.avg_pool2d(x, 3, 1, 1)),
    "adaptive_avg_pool2d": (lambda x: P.adaptive_avg_pool2d(x, 48), lambda x: F.adaptive_avg_pool2d(x, 48)),
    "adaptive_max_pool2d": (lambda x: P.adaptive_max_pool2d(x, 48), lambda x: F.adaptive_max_pool2d(x, 48)),
    "global_avg_pool2d": (P.global_avg_pool2d, lambda x: F.adaptive_avg_pool2d(x, 1)),
    "global_max_pool2d": (P.global_max_pool2d, lambda x: F.adaptive_max_pool2d(x, 1)),
    "conv2d_depthwise": (lambda x: P.conv2d(x, W_DW, None, 1, 1, 1, 64), lambda x: F.conv2d(x, W_DW, None, 1, 1, 1, 64)),
    "conv2d_dense": (lambda x: P.conv2d(x, W_DENSE, None, 1, 1), lambda x: F.conv2d(x, W_DENSE, None, 1, 1)),
}


def forward_backward(fn, x, seed):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).contiguous(
        memory_format=torch.channels_last if not x.is_contiguous() else torch.contiguous_format)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_reused_buffers_are_overwritten(name, layout):
    mine, theirs = CALLS[name]
    for seed in range(3):  # the second and third calls get the buffers the one before freed
        x = torch.randn(8, 64, 64, 64, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=layout)
        y, gx = forward_backward(mine, x, seed)
        ey, egx = forward_backward(theirs, x, seed)
        assert y.stride() == ey.stride() and gx.stride() == egx.stride()
        torch.testing.assert_close(y, ey, rtol=1e-5, atol=1e-5, msg=f"{name} forward, call {seed}")
        torch.testing.assert_close(gx, egx, rtol=1e-5, atol=1e-5, msg=f"{name} backward, call {seed}")
        assert gx.nbytes >= 4 * MIB
        del y, gx


def test_freed_buffer_serves_the_next_call_of_its_size():
    x = torch.randn(8, 64, 64, 64)
    y = P.max_pool2d(x, 3, 1, 1)
    ptr = y.data_ptr()
    assert ptr % (2 * MIB) == 0  # huge-page aligned
    y.fill_(float("nan"))
    del y
    y = P.max_pool2d(x, 3, 1, 1)
    assert y.data_ptr() == ptr
    torch.testing.assert_close(y, F.max_pool2d(x, 3, 1, 1), rtol=0, atol=0)
    small = P.max_pool2d(x[:, :8, :32], 3, 1, 1)  # under 4 MiB: torch's allocator, not the cache
    assert small.data_ptr() != ptr and small.nbytes < 4 * MIB
    del y, small
    assert poolops.empty_cache() >= 8 * MIB
    assert poolops.empty_cache() == 0


def test_outputs_resize_and_free_from_other_threads():
    x = torch.randn(8, 64, 64, 64)
    y = P.avg_pool2d(x, 3, 1, 1)
    y.resize_(8, 64, 80, 80)  # the storage grows through the same allocator
    y[:, :, :64, :64].fill_(1.0)
    y.resize_(2, 3)
    assert y.shape == (2, 3)
    outs = [P.avg_pool2d(x, 3, 1, 1) for _ in range(4)]
    threads = [threading.Thread(target=outs.pop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outs == []
    poolops.empty_cache()


def test_out_of_memory_frees_the_cache_then_raises():
    x = torch.randn(8, 64, 64, 64)
    kept = P.avg_pool2d(x, 3, 1, 1)
    del kept  # 8 MiB kept
    y = P.avg_pool2d(x, 3, 1, 1)
    with pytest.raises(RuntimeError, match="out of CPU memory allocating"):
        y.resize_(1 << 46)  # 256 TiB of float32: no system gives that
    assert poolops.empty_cache() == 0  # the kept buffers were returned before giving up


def run(code, **env):
    import os
    return subprocess.run([sys.executable, "-c", "import torch, poolops, poolops.functional as P\n" + code],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_cache_size_from_the_environment():
    code = "x = torch.randn(8, 64, 64, 64)\ny = P.max_pool2d(x, 3, 1, 1)\ndel y\nprint(poolops.empty_cache())"
    assert run(code, POOLOPS_CPU_CACHE_MB="0").stdout.split() == ["0"]
    assert run(code, POOLOPS_CPU_CACHE_MB="4").stdout.split() == ["0"]  # an 8 MiB buffer is over the cap
    assert run(code, POOLOPS_CPU_CACHE_MB="8").stdout.split() == [str(8 * MIB)]
    bad = run(code, POOLOPS_CPU_CACHE_MB="lots")
    assert bad.returncode != 0 and "POOLOPS_CPU_CACHE_MB must be a whole number, got 'lots'" in bad.stderr
