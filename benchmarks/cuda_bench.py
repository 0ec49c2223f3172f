"""Times the CUDA C++ kernels next to their PyTorch references (eager, on the GPU) and the Triton ops where the
Triton branch registered them (`htkernels::adapter_spatial`, `htkernels::preprocess`), in one process.

    python -m benchmarks.cuda_bench [--out results.json]

Each row: median, min and max per call (ms) over repeats of back-to-back calls timed with CUDA events, and the
speedup against the reference. `cuda_launcher` is the bare launcher (precomputed pointers, no Python checks), the
floor under the torch.library op `cuda`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import htkernels.adapter_spatial  # noqa: F401  (registers the Triton op where that branch provides it)
import htkernels.preprocess  # noqa: F401
from engine.bench.inputs import pil_weights
from engine.bench.machine import git_state, machine_info
from htkernels import cuda_ops
from htkernels.adapter_spatial import adapter_spatial_ref
from htkernels.preprocess import preprocess_ref
from htkernels.testing import PARAM_NAMES, random_frames, spatial_inputs
from htkernels.timing import cuda_event_ms

REPEATS = 7
CALLS = 20


def time_ms(fn) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()

    def calls():
        for _ in range(CALLS):
            fn()

    samples = [cuda_event_ms(calls) / CALLS for _ in range(REPEATS)]
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def registered_op(name: str):
    try:
        return getattr(torch.ops.htkernels, name)
    except (AttributeError, RuntimeError):
        return None


def spatial_rows() -> list:
    rows = []
    triton = registered_op("adapter_spatial")
    extension = cuda_ops.load_extension()
    for batch in (1, 32):
        for spectral in (False, True):
            for dtype in (torch.float16, torch.float32):
                h = w = 14
                channels = 64
                z, filt, params = spatial_inputs(batch, h, w, channels, spectral, dtype, "cuda", seed=batch)
                args = [params[name] for name in PARAM_NAMES]
                out = torch.empty_like(z)
                workspace_bytes = extension.adapter_spatial_workspace_bytes(batch, h, w, channels, spectral)
                workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device="cuda")
                pointers = [arg.data_ptr() for arg in args]
                stream = torch.cuda.current_stream().cuda_stream
                dtype_code = {torch.float32: 0, torch.float16: 1}[dtype]

                def launcher():
                    cuda_ops.launch(extension.adapter_spatial, z.data_ptr(), out.data_ptr(), dtype_code, batch, h, w,
                                    channels, channels // 4, 0 if filt is None else filt.data_ptr(), *pointers,
                                    workspace.data_ptr(), workspace_bytes, stream)

                providers = {
                    "reference": lambda: adapter_spatial_ref(z, h, w, filt, *args),
                    "cuda": lambda: cuda_ops.adapter_spatial(z, h, w, filt, *args),
                    "cuda_launcher": launcher,
                }
                if triton is not None:
                    providers["triton"] = lambda: triton(z, h, w, filt, *args)
                expected = adapter_spatial_ref(z, h, w, filt, *args).float()
                shape = {"batch": batch, "h": h, "w": w, "channels": channels, "spectral": spectral}
                rows += measure("adapter_spatial", shape, dtype, providers, expected)
    return rows


def preprocess_rows() -> list:
    rows = []
    triton = registered_op("preprocess")
    for batch in (1, 16):
        for rgb in (False, True):
            height, width, size = 480, 640, 224
            frames = random_frames(batch, height, width, rgb, seed=batch, device="cuda")
            weights = pil_weights(height, size, "cuda"), pil_weights(width, size, "cuda")
            providers = {
                "reference": lambda: preprocess_ref(frames, *weights, 1 / 255, torch.float32),
                "cuda": lambda: cuda_ops.preprocess(frames, *weights, 1 / 255, torch.float32),
            }
            if triton is not None:
                providers["triton"] = lambda: triton(frames, *weights, 1 / 255, torch.float32)
            expected = preprocess_ref(frames, *weights, 1 / 255, torch.float32)
            shape = {"batch": batch, "frame": [height, width, 3 if rgb else 1], "size": size}
            rows += measure("preprocess", shape, torch.float32, providers, expected)
    return rows


def measure(op: str, shape: dict, dtype, providers: dict, expected: torch.Tensor) -> list:
    rows = []
    reference_ms = None
    for name, fn in providers.items():
        try:
            result = fn()
            max_error = (result.float() - expected).abs().max().item() if result is not None else None
            timing = time_ms(fn)
        except Exception as exc:  # a provider that fails is reported, the others still run
            rows.append({"op": op, "shape": shape, "dtype": str(dtype), "provider": name, "error": repr(exc)})
            continue
        if name == "reference":
            reference_ms = timing["median_ms"]
        row = {"op": op, "shape": shape, "dtype": str(dtype), "provider": name, **timing, "max_abs_error": max_error}
        if reference_ms:
            row["speedup_vs_reference"] = reference_ms / timing["median_ms"]
        rows.append(row)
        print(f"{op:16s} {json.dumps(shape):70s} {str(dtype):14s} {name:14s} {timing['median_ms']:9.4f} ms "
              f"x{row.get('speedup_vs_reference', 1.0):6.2f}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda_bench: no CUDA GPU; nothing to time", file=sys.stderr)
        return 2
    machine = machine_info("cuda")
    report = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda_runtime_of_extension": cuda_ops.load_extension().CUDART_VERSION,
        "git_sha": git_state()["sha"] or "unknown",
        "date": machine["date"],
        "machine": machine,
        "method": f"CUDA events, median of {REPEATS} repeats of {CALLS} back-to-back calls",
        "results": spatial_rows() + preprocess_rows(),
    }
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
