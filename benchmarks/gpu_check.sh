#!/usr/bin/env bash
# One GPU check, under 6 minutes on an H100/H200, run from the repository root on a machine without network:
#   bash benchmarks/gpu_check.sh
# Needs python3 with torch (CUDA) and triton installed; installs nothing. Sections (each guarded, each with its
# own time limit; a failure is reported and the next section runs):
#   1. environment (nvidia-smi, versions)
#   2. optional: build the CUDA C++ extension htkernels._C when csrc/ and nvcc exist (HTK_CUDA_ARCHS=90)
#   3. GPU tests: tests/htkernels (compiled Triton kernels on CUDA) and every test marked requires_cuda
#   4. benchmarks (benchmarks/gpu_check.py): bf16 GEMM rate, each kernel vs eager/torch.compile reference,
#      end-to-end forward at batch 1, 8, 64, 256 vs the eager reference and torch.compile(reference)
#   5. the table, last
# Writes gpu_check.json, gpu_check.log and pytest.log under $OUT when set, else under benchmarks/results/.
# GPU_CHECK_BUDGET_S (default 340) is the whole script's wall-clock budget.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/benchmarks/results}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
JSON="$OUTDIR/gpu_check.json"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-340}
remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }
limit() {  # limit WANTED: WANTED seconds, or what is left of the budget minus a reserve for the table
  local left=$(( $(remaining) - 15 ))
  (( left < $1 )) && echo $(( left > 5 ? left : 5 )) || echo "$1"
}
section() { echo; echo "=== $1 ($(( $(date +%s) - START )) s elapsed)"; }
STATUS=0

section "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi unavailable"
"$PY" - <<'PYEOF' || STATUS=1
import torch
print("python", __import__("platform").python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed: the Triton columns will fail")
PYEOF

section "CUDA C++ extension (optional)"
if [ -d csrc ] && [ -f setup.py ] && command -v nvcc >/dev/null 2>&1; then
  if HTK_CUDA_ARCHS=${HTK_CUDA_ARCHS:-90} timeout "$(limit 120)" "$PY" setup.py build_ext --inplace \
      > "$OUTDIR/build_ext.log" 2>&1; then
    echo "built htkernels._C"
  else
    echo "extension build failed or timed out (see build_ext.log); continuing without it"
    tail -5 "$OUTDIR/build_ext.log"
  fi
else
  echo "skipped: no csrc/, setup.py or nvcc"
fi

section "GPU tests"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout "$(limit 90)" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/htkernels \
      -k "not compile_targets" \
      > "$OUTDIR/pytest.log" 2>&1
  rc=$?
  tail -25 "$OUTDIR/pytest.log"
  (( rc != 0 )) && { echo "kernel tests: exit $rc"; STATUS=1; }
  timeout "$(limit 45)" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -m requires_cuda tests \
      --ignore=tests/htkernels > "$OUTDIR/pytest_cuda.log" 2>&1
  rc=$?
  tail -8 "$OUTDIR/pytest_cuda.log"
  (( rc != 0 && rc != 5 )) && { echo "requires_cuda tests: exit $rc"; STATUS=1; }
else
  echo "pytest not installed: running the kernel checks of the benchmark only (errors are in its JSON)"
fi

section "benchmarks"
BENCH_LIMIT=$(limit 400)
timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu_check.py --out "$JSON" --budget-s "$BENCH_LIMIT" \
    > "$OUTDIR/bench_stdout.log" 2>&1
rc=$?
(( rc != 0 )) && { echo "benchmarks: exit $rc (124 = time budget)"; tail -20 "$OUTDIR/bench_stdout.log"; STATUS=1; }

section "results"
if [ -f "$JSON" ]; then
  "$PY" benchmarks/gpu_check.py --table "$JSON" || STATUS=1
else
  echo "no results JSON was written"
  STATUS=1
fi
echo
echo "total $(( $(date +%s) - START )) s; logs and JSON in $OUTDIR; status $STATUS"
exit $STATUS
