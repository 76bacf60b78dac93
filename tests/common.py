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


def assert_same_layout(actual, expected):
    assert actual.shape == expected.shape
    assert actual.stride() == expected.stride(), (actual.stride(), expected.stride())
    assert actual.dtype == expected.dtype
