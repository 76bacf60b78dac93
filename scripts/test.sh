#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the test suite: pytest, then the C++ test
# through CMake/ctest unless POOLOPS_CTEST=0.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
venv="${POOLOPS_VENV:-.venv}"
"$venv/bin/python" -m pytest tests -q "$@"
if [ "${POOLOPS_CTEST:-1}" = "1" ]; then
  prefix="$("$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  nvrtc="$(ls "$venv"/lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so.* 2>/dev/null | head -n1 || true)"
  cmake -S . -B cmake-build -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DCUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda \
    ${nvrtc:+-DCUDA_nvrtc_LIBRARY="$nvrtc"} > cmake-build.log 2>&1 || { cat cmake-build.log; exit 1; }
  cmake --build cmake-build -j"$(nproc)" >> cmake-build.log 2>&1 || { cat cmake-build.log; exit 1; }
  ctest --test-dir cmake-build --output-on-failure
fi
