#!/usr/bin/env bash
# On a GPU machine: build with CUDA (sm_90), run the CUDA tests and the GPU
# benchmark, and print a short table last. Results land in $OUT (or
# benchmarks/results/) as gpu-<date>.json and .md.
set -uo pipefail
cd "$(dirname "$0")/.."
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
py=python3
if ! $py -c "import torch" 2>/dev/null; then scripts/setup.sh; py=.venv/bin/python; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -m pip install -q --no-build-isolation -e . 2>&1 | tail -n 3
$py -m pytest tests -q -m needs_cuda -p no:cacheprovider 2>&1 | tail -n 15 | tee "$out/gpu-tests.txt"
$py -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -n 3
# The CUDA tests of every op again under compute-sanitizer: memcheck, then racecheck.
san="${CUDA_HOME}/bin/compute-sanitizer"
if [ -x "$san" ]; then
  for tool in memcheck racecheck; do
    "$san" --tool "$tool" --error-exitcode 99 --target-processes all $py -m pytest tests -q -x -p no:cacheprovider \
      -m needs_cuda -k "not deterministic and not compile" 2>&1 | tail -n 4 | sed "s/^/[$tool] /" | tee -a "$out/gpu-tests.txt"
  done
fi
stamp="$(date -u +%Y-%m-%d)"
$py -m poolops.bench --device cuda --dtypes float32,bfloat16 --out "$out/gpu-$stamp.json" 2>/dev/null \
  | tee "$out/gpu-$stamp.md" | tail -n 40
