#!/usr/bin/env bash
# Creates .venv (or $POOLOPS_VENV) with the pinned dependencies and builds
# poolops into it in editable mode. The CUDA kernels are compiled whenever a
# CUDA toolkit is found (no GPU needed); POOLOPS_CUDA=0 skips them, FORCE_CUDA=1
# fails if they cannot be built.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${POOLOPS_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r requirements-dev.txt
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
"$venv/bin/pip" install -q --no-build-isolation -e .
"$venv/bin/python" -c "import poolops; print('poolops built, CUDA', poolops.cuda_version())"
