"""poolops: downsampling operators for PyTorch in C++ and CUDA."""
import platform

import torch


def _check_cpu() -> None:
    # The CPU kernels are compiled for x86-64-v3 (AVX2, FMA); say so instead of
    # dying with an illegal instruction.
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return
    missing = [f for f in ("avx2", "fma", "bmi2") if flags and f not in flags]
    if missing:
        raise ImportError(f"poolops needs an x86-64-v3 CPU; this one lacks {', '.join(missing)}")


_check_cpu()

from . import _C  # noqa: F401  (loads the library: runs the operator registrations)
from . import _meta, _autograd  # noqa: F401  (fake kernels, and the backward ops' autograd)
from . import functional, nn  # noqa: F401

__version__ = "0.1.0"


def cuda_version() -> int:
    """CUDA version the kernels were compiled with (e.g. 13000), or -1 for a CPU-only build."""
    return torch.ops.poolops._cuda_version()


def empty_cache() -> int:
    """Frees the large CPU output buffers poolops keeps for reuse; returns the bytes freed.

    CPU outputs of 4 MiB or more are kept after they are freed, up to
    ``POOLOPS_CPU_CACHE_MB`` (default 256; 0 keeps none), so that the next call
    of the same size skips the page faults of a fresh buffer.
    """
    return torch.ops.poolops._empty_cpu_cache()


__all__ = ["functional", "nn", "cuda_version", "empty_cache"]
