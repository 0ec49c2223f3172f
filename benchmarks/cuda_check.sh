#!/usr/bin/env bash
# GPU check of the CUDA C++ kernels (csrc/), for a machine with a GPU and nvcc (benchmarks/gpu_check.sh calls it):
#   1. build htkernels._C in place for this GPU's architecture only;
#   2. run tests/csrc (the GPU tests compare with the references at tests/tolerances.py's tolerances);
#   3. compute-sanitizer memcheck and racecheck on benchmarks/cuda_driver.py (both kernels, every dtype);
#   4. time both kernels next to their references and the Triton ops (benchmarks/cuda_bench.py).
# Logs and JSON go to $OUT/cuda (or benchmarks/results/cuda). pybind11 must be importable for the build; without
# network it is installed from wheels carried in $HTK_WHEELS (default .whl/, see docs/cuda.md). Runs in < 3 min.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/results}/cuda
WHEELS=${HTK_WHEELS:-.whl}
BUDGET_S=${HTK_CHECK_BUDGET_S:-170}
mkdir -p "$DEST"
declare -A STEP
failed=0

record() {  # record NAME STATUS: ok, failed (rc) or skipped (why)
  STEP[$1]=$2
  echo "cuda_check: $1: $2 (${SECONDS}s)"
  case $2 in failed*) failed=1 ;; esac
}

over_budget() { [ "$SECONDS" -ge "$BUDGET_S" ]; }

need_module() {  # need_module MODULE PIP_NAME: import it, or install it from the carried wheels
  "$PY" -c "import $1" 2>/dev/null && return 0
  [ -d "$WHEELS" ] && "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$2" >/dev/null 2>&1
  "$PY" -c "import $1" 2>/dev/null
}

ARCH=${HTK_CUDA_ARCHS:-$("$PY" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))" \
  2>/dev/null || echo 90)}

if ! need_module pybind11 "pybind11==3.1.0"; then
  record build "failed (pybind11 not importable and not in $WHEELS; see docs/cuda.md)"
elif HTK_CUDA_ARCHS="$ARCH" timeout 240 "$PY" setup.py build_ext --inplace >"$DEST/build.log" 2>&1; then
  record build "ok (HTK_CUDA_ARCHS=$ARCH, $(grep -o 'built for.*' "$DEST/build.log" | tail -1))"
else
  tail -20 "$DEST/build.log"
  # A newer toolchain may warn where CI's does not: report it, and still check the kernels.
  if HTK_CUDA_WERROR=0 HTK_CUDA_ARCHS="$ARCH" timeout 240 "$PY" setup.py build_ext --inplace \
    >"$DEST/build_no_werror.log" 2>&1; then
    record build "failed with warnings as errors, ok without (see build.log)"
  else
    record build "failed (see build.log, build_no_werror.log)"
  fi
fi
HAVE_EXT=$("$PY" -c "import htkernels._C" >/dev/null 2>&1 && echo 1 || echo 0)

if [ "$HAVE_EXT" != 1 ]; then
  record tests "skipped (no extension)"
elif ! need_module pytest pytest; then
  record tests "skipped (pytest not importable and not in $WHEELS)"
else
  # The emulated kernels are CPU-only and run in CI; here the real ones run.
  timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/csrc --ignore=tests/csrc/test_emulated_kernels.py \
    --junitxml="$DEST/tests.xml" >"$DEST/tests.log" 2>&1
  rc=$?
  tail -3 "$DEST/tests.log"
  if [ $rc -eq 0 ]; then record tests "ok ($(tail -1 "$DEST/tests.log" | tr -d '='))"; else record tests "failed (rc $rc)"; fi
fi

SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null || true)
for tool in memcheck racecheck; do
  if [ "$HAVE_EXT" != 1 ]; then
    record "$tool" "skipped (no extension)"
  elif [ -z "$SANITIZER" ]; then
    record "$tool" "skipped (compute-sanitizer not found)"
  elif over_budget; then
    record "$tool" "skipped (time budget of ${BUDGET_S}s spent)"
  else
    timeout 90 "$SANITIZER" --tool "$tool" --error-exitcode 3 --print-limit 20 "$PY" -m benchmarks.cuda_driver \
      >"$DEST/sanitizer_$tool.log" 2>&1
    rc=$?
    summary=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$DEST/sanitizer_$tool.log" | tail -1)
    if [ $rc -eq 0 ]; then record "$tool" "ok (${summary:-no summary})"; else record "$tool" "failed (rc $rc: $summary)"; fi
  fi
done

if [ "$HAVE_EXT" != 1 ]; then
  record bench "skipped (no extension)"
elif over_budget; then
  record bench "skipped (time budget of ${BUDGET_S}s spent)"
elif timeout 120 "$PY" -m benchmarks.cuda_bench --out "$DEST/bench.json" >"$DEST/bench.log" 2>&1; then
  record bench "ok (bench.json)"
  cat "$DEST/bench.log"
else
  record bench "failed (rc $?, see bench.log)"
  tail -20 "$DEST/bench.log"
fi

{
  echo "{"
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"git_sha\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\","
  echo "  \"device\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)\","
  echo "  \"seconds\": $SECONDS,"
  for name in build tests memcheck racecheck; do
    printf '  "%s": "%s",\n' "$name" "${STEP[$name]//\"/\'}"
  done
  printf '  "bench": "%s"\n' "${STEP[bench]//\"/\'}"
  echo "}"
} >"$DEST/summary.json"
echo "cuda_check: summary in $DEST/summary.json"
exit $failed
