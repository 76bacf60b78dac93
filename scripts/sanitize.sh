#!/usr/bin/env bash
# Builds the C++ kernels (CPU) with AddressSanitizer and UndefinedBehaviorSanitizer
# in a scratch copy of the tree and runs the test suite against that build.
# Any sanitizer report aborts the run. Extra arguments go to pytest.
#   scripts/sanitize.sh                      # the whole suite, less the slow model tests
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(cd "${POOLOPS_VENV:-.venv}" && pwd)"
work="${TMPDIR:-/tmp}/poolops-sanitize"
rm -rf "$work" && mkdir -p "$work"
git ls-files -z | xargs -0 tar -cf - | tar -C "$work" -xf -
cd "$work"
unset POOLOPS_EXPECT_CUDA  # this build is CPU-only on purpose
FORCE_CUDA=0 POOLOPS_CUDA=0 POOLOPS_SANITIZE=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$venv/bin/python" setup.py build_ext --inplace > sanitize-build.log 2>&1 \
  || { tail -n 30 sanitize-build.log; exit 1; }
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# allocator_may_return_null: an impossible allocation returns null (as without ASan), so the
# out-of-memory path is tested rather than aborted.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
LD_PRELOAD="$preload" PYTHONPATH="$work/python" "$venv/bin/python" -m pytest tests -q -p no:cacheprovider \
  -m "not slow" --deselect tests/test_models.py "$@"
echo "sanitizers: clean"
