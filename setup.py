"""Builds poolops._C from csrc/.

Environment switches:
  POOLOPS_CUDA=0   skip the CUDA sources (quick CPU-only iteration)
  FORCE_CUDA=1     require the CUDA build (fail if no toolkit is found)
  DEBUG=1          -O0 -g
  POOLOPS_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (CPU code; see scripts/sanitize.sh)
  POOLOPS_MARCH="-march=native"  CPU flags instead of -march=x86-64-v3 (a build for this machine only)
The CUDA build needs no GPU: CUDA_HOME defaults to /usr/local/cuda and
TORCH_CUDA_ARCH_LIST to 9.0 (H100/H200).
"""
import glob
import os
import platform
import shutil

from setuptools import find_packages, setup

if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
skip_cuda = os.environ.get("POOLOPS_CUDA", "1") == "0"
have_toolkit = CUDA_HOME is not None and (
    os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None
)
if force_cuda and not have_toolkit:
    raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
with_cuda = force_cuda or (have_toolkit and not skip_cuda)

debug = os.environ.get("DEBUG", "0") == "1"
opt = ["-O0", "-g"] if debug else ["-O3"]
# The CPU loops are written for the auto-vectoriser; on x86 they target AVX2
# (x86-64-v3). poolops/__init__.py refuses to load on a CPU without it.
# POOLOPS_MARCH overrides the flags for a build that stays on one machine
# (e.g. "-march=native": AVX-512 speeds up the bfloat16 loops where present).
isa = os.environ.get("POOLOPS_MARCH", "-march=x86-64-v3").split() if platform.machine() in ("x86_64", "AMD64") else []
# at::parallel_for is inline OpenMP: without -fopenmp every kernel runs on one thread.
import torch  # noqa: E402

openmp = ["-fopenmp"] if "OpenMP" in torch.__config__.parallel_info() else []

sanitize = os.environ.get("POOLOPS_SANITIZE", "0") == "1"
san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
if sanitize:
    opt = ["-O1"] + san

sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
define_macros = []
extra = {"cxx": opt + isa + openmp}
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("WITH_CUDA", None))
    extra["nvcc"] = opt + ["--expt-relaxed-constexpr"]
    ext_cls = CUDAExtension
else:
    ext_cls = CppExtension

print(f"poolops: building {'with' if with_cuda else 'without'} CUDA ({len(sources)} sources)")

setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[
        ext_cls("poolops._C", sources, define_macros=define_macros, extra_compile_args=extra,
                extra_link_args=openmp + (san if sanitize else []))
    ],
    cmdclass={"build_ext": BuildExtension},
)
