#!/usr/bin/env bash
# One GPU check, under 6 minutes on an H100/H200, run from the repository root on a machine without network:
#   bash benchmarks/gpu_check.sh
# Needs python3 with torch (CUDA) and triton installed; installs nothing. Sections (each guarded, each with its
# own time limit; a failure is reported and the next section runs):
#   1. environment (nvidia-smi, versions)
#   2. optional: build the CUDA C++ extension htkernels._C when csrc/ and nvcc exist (HTK_CUDA_ARCHS=90)
#   3. GPU tests, five pytest processes side by side: tests/htkernels (compiled Triton kernels on CUDA), tests/csrc
#      (the CUDA C++ kernels and their launcher checks) and every other test marked requires_cuda
#   4. benchmarks (benchmarks/gpu_check.py): bf16 GEMM rate, each kernel vs eager/torch.compile reference,
#      end-to-end forward at batch 1, 8, 64, 256 vs the eager reference and torch.compile(reference), the CUDA
#      kernels per forward at batch 1 (torch.profiler, target <= 80), and the frame
#      path (uint8 frame to mask on the device, 480x640 and 1080x1920, batch 1 and 8) next to the tensor forward,
#      and the artifact runtimes' host/device split (onnx, tensorrt where they can run: trtexec's Host Latency =
#      H2D + GPU Compute + D2H, batch 1 and 8, through ht-engine bench's own code; a runtime missing here is a row
#      with the reason)
#   5. the table, last (the frame path's and the split's rows at its end)
# Writes gpu_check.json, gpu_check.log and pytest_*.log under $OUT when set, else under benchmarks/results/.
# GPU_CHECK_BUDGET_S (default 345) is the whole script's wall-clock budget. A rerun of a part:
#   GPU_CHECK_TESTS (comma-separated test groups, default all; "none" skips the tests),
#   GPU_CHECK_SECTIONS (sections of gpu_check.py, default all), GPU_CHECK_BATCHES (end-to-end batch sizes).
# A test group that crashes (exit 139) is rerun under gdb, when there is one, for the native backtrace.
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
BUDGET=${GPU_CHECK_BUDGET_S:-345}
remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }
limit() {  # limit WANTED: WANTED seconds, or what is left of the budget minus a reserve for the table
  local left=$(( $(remaining) - 15 ))
  (( left < $1 )) && echo $(( left > 5 ? left : 5 )) || echo "$1"
}
section() { echo; echo "=== $1 ($(( $(date +%s) - START )) s elapsed)"; }
STATUS=0

section "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi unavailable"
echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none)  g++: $(g++ -dumpfullversion 2>/dev/null \
  || echo none)  gdb: $(command -v gdb || echo none)  LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
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

section "python packages"
# The engine's own pure dependencies the GPU image may lack (safetensors: packages); wheels carried in .whl/.
for module in safetensors; do
  "$PY" -c "import $module" 2>/dev/null || "$PY" -m pip install --quiet --no-index --find-links .whl "$module" \
    2>&1 | tail -2 || true
  "$PY" -c "import $module; print('$module', $module.__version__)" 2>&1 | tail -1
done
"$PY" - <<'PYEOF'
import sysconfig
try:
    import pybind11
    version = pybind11.__version__
except ImportError:
    version = "not installed"
print("pybind11", version, "| C++ compiler of extensions:", sysconfig.get_config_var("CXX"))
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
if [ "${GPU_CHECK_TESTS:-all}" = none ]; then
  echo "skipped (GPU_CHECK_TESTS=none)"
elif "$PY" -c "import pytest" 2>/dev/null; then
  # Seven pytest processes side by side (Triton's JIT compiles on the CPU; the machine has cores to spare), each
  # with its own log; a crash in one (exit 139) does not stop the others. The emulated CUDA kernels are CPU-only.
  TEST_LIMIT=$(limit 130)
  declare -A GROUPS_=(
    [triton_gemms]="tests/htkernels/test_adapter_gemms.py tests/htkernels/test_linear_act.py
                    tests/htkernels/test_norm_linear.py"
    [triton_tune]="tests/htkernels/test_tune.py"
    [triton_fused]="tests/htkernels/test_residual_adapter.py tests/htkernels/test_adapter.py"
    [triton_spatial]="tests/htkernels/test_adapter_spatial.py"
    [triton_ops]="tests/htkernels/test_ops.py tests/htkernels/test_preprocess.py tests/htkernels/test_provider.py
                  tests/htkernels/test_cache.py"
    [csrc]="tests/csrc --ignore=tests/csrc/test_emulated_kernels.py"
    [requires_cuda]="-m requires_cuda tests --ignore=tests/htkernels --ignore=tests/csrc"
  )
  SELECTED=${GPU_CHECK_TESTS:-all}
  declare -A PIDS=()
  for name in "${!GROUPS_[@]}"; do
    [[ $SELECTED == all || ,$SELECTED, == *",$name,"* ]] || continue
    # shellcheck disable=SC2086  # the group holds several arguments
    timeout "$TEST_LIMIT" "$PY" -X faulthandler -m pytest -q -rs -p no:cacheprovider -o addopts="" \
        -k "not compile_targets" ${GROUPS_[$name]} > "$OUTDIR/pytest_$name.log" 2>&1 &
    PIDS[$name]=$!
  done
  for name in "${!PIDS[@]}"; do
    wait "${PIDS[$name]}"
    rc=$?
    summary=$(grep -E "passed|failed|error|skipped|no tests ran" "$OUTDIR/pytest_$name.log" | tail -1)
    echo "  $name: exit $rc  ${summary:-(no summary; see pytest_$name.log)}"
    (( rc != 0 && rc != 5 )) && { grep -E "^(FAILED|ERROR)|Fatal Python" "$OUTDIR/pytest_$name.log" | head -8; STATUS=1; }
    if (( rc == 139 )) && command -v gdb >/dev/null 2>&1; then
      crashed=$(grep -oE "File \"$ROOT/tests/[^\"]+\", line [0-9]+ in test_[A-Za-z0-9_]+" "$OUTDIR/pytest_$name.log" \
        | tail -1 | sed -E "s#File \"$ROOT/([^\"]+)\", line [0-9]+ in (.*)#\1::\2#")
      # shellcheck disable=SC2086
      timeout "$(limit 60)" gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args "$PY" -m pytest -q -x \
        -p no:cacheprovider -o addopts="" ${crashed:-${GROUPS_[$name]}} > "$OUTDIR/gdb_$name.log" 2>&1
      echo "  $name: native backtrace in gdb_$name.log"; grep -E "^#[0-9]+ " "$OUTDIR/gdb_$name.log" | head -12
    fi
  done
else
  echo "pytest not installed: running the kernel checks of the benchmark only (errors are in its JSON)"
fi

section "benchmarks"
BENCH_LIMIT=$(limit 400)
timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu_check.py --out "$JSON" --budget-s "$BENCH_LIMIT" \
    ${GPU_CHECK_SECTIONS:+--sections "$GPU_CHECK_SECTIONS"} ${GPU_CHECK_BATCHES:+--batches "$GPU_CHECK_BATCHES"} \
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
