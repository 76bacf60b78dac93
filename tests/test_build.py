import os

import pytest
import torch

import poolops

OPS = [
    "max_pool2d_with_indices", "max_pool2d", "_max_pool2d_backward",
    "avg_pool2d", "_avg_pool2d_backward",
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward", "adaptive_max_pool2d", "_adaptive_max_pool2d_backward",
    "global_avg_pool2d", "_global_avg_pool2d_backward", "global_max_pool2d", "_global_max_pool2d_backward",
]


def has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"poolops::{op}", key)


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernels_registered(op):
    assert has_kernel(op, "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_whenever_built_with_cuda(op):
    if poolops.cuda_version() == -1:
        pytest.skip("built without CUDA")
    assert has_kernel(op, "CUDA")


def test_cuda_build_present_where_expected():
    """CI sets POOLOPS_EXPECT_CUDA=1: a build that silently dropped the CUDA
    sources fails here. With a GPU present the build must have CUDA too."""
    if os.environ.get("POOLOPS_EXPECT_CUDA") == "1" or torch.cuda.is_available():
        assert poolops.cuda_version() > 0
        major = poolops.cuda_version() // 1000
        if torch.version.cuda:
            assert str(major) == torch.version.cuda.split(".")[0]


OPS += ["conv2d", "_conv2d_backward_input", "_conv2d_backward_weight"]  # extends the list the parametrize marks above hold
