#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the benchmark: every poolops op against
# torch's native op, on CPU and on CUDA when present. Extra arguments go to
# `python -m poolops.bench` (try --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
"${POOLOPS_VENV:-.venv}/bin/python" -m poolops.bench "$@"
