"""Section `split`: trtexec's Host Latency vs GPU Compute for the artifact runtimes on the device.

`ht-engine bench`'s own code (`engine.bench.run_bench`) on a seeded package with the backends `onnx` and `tensorrt`:
each one that can run here builds a temporary artifact and is timed end to end on the host clock (its latency: input
on the host, output back on the host); then a second series of its runner's instrumented runs (`Runner.run_split`)
splits each run into the host-to-device copy, the compute and the device-to-host copy: CUDA events on the execution
stream (tensorrt), the host clock around synchronized IO-binding phases (onnx on the CUDA execution provider). A
runtime that cannot run here (no TensorRT, an onnxruntime without its CUDA provider) is a row with its reason. The
report is validated against the bench schema where jsonschema is installed. `--device cpu --tiny` runs the same code
on CPU, where every split is null with its reason.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from engine.bench import BenchOptions, run_bench, validate_report
from engine.bench.report import ReportError
from engine.package import save_package
from engine.weights import random_package_tensors

from .common import Check
from .e2e import model_config

BACKENDS = ("onnx", "tensorrt")
BATCHES = (1, 8)
TINY_BATCHES = (1, 2)


def _validated(report: dict) -> bool | str:
    """True when the report matches the bench schema, else why not (a mismatch, or no jsonschema to check with)."""
    try:
        validate_report(report)
    except ReportError as exc:
        return str(exc)
    return True


def run(check: Check) -> None:
    args, device = check.args, check.device
    section = check.results.setdefault("gpu_split", {"rows": []})
    if time.monotonic() > check.deadline(0.85):
        section["skipped"] = "the time budget was spent before this section"
        return
    cfg = model_config(args.tiny)
    precision = "fp16" if device.type == "cuda" else "fp32"
    section.update(arch=cfg.arch, task=cfg.task, precision=precision)
    with tempfile.TemporaryDirectory(prefix="gpu-split-") as scratch:
        package = Path(scratch) / "split.htpkg"
        save_package(package, cfg, random_package_tensors(cfg, seed=0, calibrate=False))
        options = BenchOptions(
            source=package, backends=list(BACKENDS), precisions=[precision], device=str(device),
            batches=list(TINY_BATCHES if args.tiny else BATCHES), duration_s=0.0 if args.tiny else 1.0,
            iterations=2 if args.tiny else args.reps, warmup_s=0.0 if args.tiny else 0.2, compiled_baseline=False,
            gemm_duration_s=0.0 if args.tiny else 0.2, gemm_size=64 if args.tiny else None,
            time_limit_s=max(1.0, check.deadline(0.95) - time.monotonic()))
        report = run_bench(options)
    section["validated"] = _validated(report)
    for case in report["cases"]:
        if case["role"] != "backend":
            continue
        split = case["gpu_split_ms"]
        if split is not None:
            split = {key: value for key, value in split.items() if key != "samples_ms"}
        section["rows"].append({
            "backend": case["backend"], "precision": case["precision"], "batch": case["batch"],
            "status": case["status"], "message": case["message"],
            "call_median_ms": None if case["latency_ms"] is None else case["latency_ms"]["median_ms"],
            "gpu_split_ms": split, "gpu_split_reason": case["gpu_split_reason"]})
    check.save()
