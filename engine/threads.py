"""The engine's thread budget: one inference pool per process gets the cores, and no pool spins against another.

The budget is one number (`inference_threads`): `HT_ENGINE_THREADS`, or the cores this process may use (its CPU
affinity). Each pool that does the heavy work is sized to it where it is made: torch's intra-op pool when a Predictor
loads (only where torch is already imported; the ONNX and OpenVINO runtimes never import it), every ONNX Runtime
session (`onnxruntime_session_options`: that many intra-op threads, one inter-op thread, sequential execution, no
spin-waiting) and every OpenVINO CPU compiled model (`openvino_config`: that many threads, one stream; OpenVINO takes
at most the cores it sees), the `openvino` backend's and the bench's OpenVINO anchor alike. numpy's OpenBLAS only
runs the frame path's small products, so it is held to one thread (`limit_numpy_blas`): at one thread per core its
threads busy-wait after each product and took the cores from the next forward (2-core CPU: `predict` 2.35×
`forward`, 1.17× with one BLAS thread). The limits are process-wide on purpose: a scoped limit would be undone by
whichever thread of a stream leaves its scope first.

Why ONNX Runtime does not spin (its default does), measured in one process, interleaved rounds, each variant's time
over the default's in the same round (median of those ratios; `benchmarks/bench_threads.py`, 2-core AMD EPYC,
2026-12-02, six runs of 15 or 25 rounds, load average 0.7-2.6 counting the benchmark's own threads; the tests' small
model and the full-size seeded ViT-B/16 seg model, fp32 artifacts; the last run is
`benchmarks/results/threads-cpu.json`): a torch op (768² matmul) right after an ORT `predict` of a 480×640 frame
×0.43-0.68 (faster in 13-15 of 15 and 22-24 of 25 rounds: spinning intra-op threads hold both cores after `run`
returns); the `predict` itself right after a torch op ×0.87-1.05 (no cost); a stream step, a second thread pre- and
postprocessing beside inference, ×0.76-0.96 with the small model and ×0.91-1.04 at full size (no clear effect).
Spinning inside a run only (`session.force_spinning_stop`) fixes the first, not the small model's stream step
(×0.94-1.12). OpenVINO has no spin switch (its CPU plugin runs on TBB); its CPU pinning (on by default) was measured
the same way and is left on: unpinned, full-size inference is unchanged (×1.00-1.01) and the pre/post thread beside it
slower (×1.06-1.53); only the small model's `predict` right after a torch op gained (×0.43-0.75).
"""

from __future__ import annotations

import os
import sys
import threading

from . import settings

_LOCK = threading.Lock()
_LIMITED = False

# ONNX Runtime session config entries (onnxruntime/core/session/onnxruntime_session_options_config_keys.h).
ORT_INTRA_OP_SPINNING = "session.intra_op.allow_spinning"
ORT_FORCE_SPINNING_STOP = "session.force_spinning_stop"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else every logical core)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def inference_threads() -> int:
    """The budget: `HT_ENGINE_THREADS`, or the cores this process may use."""
    configured = settings.THREADS.get()
    return available_cores() if configured is None else configured


def onnxruntime_settings(threads: int | None = None) -> dict:
    """What `onnxruntime_session_options` sets (`threads`: None for the budget)."""
    return {"intra_op_num_threads": inference_threads() if threads is None else threads, "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL", "config_entries": {ORT_INTRA_OP_SPINNING: "0"}}


def onnxruntime_session_options(ort_settings: dict | None = None):
    """An `onnxruntime.SessionOptions` sized to the budget (`ort_settings`: as `onnxruntime_settings()` returns; None
    for the budget's)."""
    import onnxruntime

    ort_settings = onnxruntime_settings() if ort_settings is None else ort_settings
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = ort_settings["intra_op_num_threads"]
    options.inter_op_num_threads = ort_settings["inter_op_num_threads"]
    options.execution_mode = getattr(onnxruntime.ExecutionMode, ort_settings["execution_mode"])
    for key, value in ort_settings["config_entries"].items():
        options.add_session_config_entry(key, value)
    return options


def openvino_config(threads: int | None = None) -> dict:
    """The properties that size an OpenVINO CPU compiled model to the budget (`threads`: None for the budget); merged
    into the config of every CPU `compile_model` (other devices have no CPU thread properties)."""
    return {"INFERENCE_NUM_THREADS": inference_threads() if threads is None else threads, "NUM_STREAMS": 1}


def limit_numpy_blas() -> None:
    """Hold numpy's OpenBLAS pool to one thread (once per process; a no-op where threadpoolctl or OpenBLAS is
    absent). torch's MKL/OpenMP pools are not touched."""
    global _LIMITED
    with _LOCK:
        if _LIMITED:
            return
        _LIMITED = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return
        # Selected by internal API: a `threadpool_limits` dict keyed "openblas" matches no library (its keys are
        # user APIs, where "blas" would take torch's MKL too, or file prefixes, which differ between numpy wheels).
        ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def size_torch_pool() -> None:
    """Give torch's intra-op pool the budget, where torch is already imported (this never imports it: the runtimes
    of ONNX and OpenVINO artifacts run without torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "set_num_threads"):
        return
    threads = inference_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def apply_budget() -> None:
    """What a Predictor does when it loads: numpy's OpenBLAS to one thread, torch's pool (if imported) to the budget.
    ONNX Runtime sessions and OpenVINO compiled models take theirs where they are made."""
    limit_numpy_blas()
    size_torch_pool()


def budget() -> dict:
    """The budget and the pools as they are now (for provenance records and bench reports): the inference threads
    and where they come from, torch's intra-op threads (null where torch is not imported), what ONNX Runtime sessions
    and OpenVINO CPU compiled models are given, and the native pools threadpoolctl sees (`internal_api:prefix` →
    threads)."""
    torch = sys.modules.get("torch")
    pools = {}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        pass
    else:
        pools = {f"{info['internal_api']}:{info['prefix']}": info["num_threads"] for info in threadpool_info()}
    return {"inference_threads": inference_threads(),
            "source": settings.THREADS.name if settings.THREADS.get() is not None else "cores",
            "torch": torch.get_num_threads() if hasattr(torch, "get_num_threads") else None,
            "onnxruntime": onnxruntime_settings(), "openvino": openvino_config(), "pools": pools}
