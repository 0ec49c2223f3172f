"""The CPU anchor: OpenVINO on the authors' (reference) model beside our backends, in one process, interleaved.

    .venv/bin/python benchmarks/bench_openvino.py            # full ViT-B seg, batches 1 and 8, 2 threads
    .venv/bin/python benchmarks/bench_openvino.py --quick    # reduced model, batch 1, a few rounds: checks it runs

Providers: the reference model eager and `torch.compile`d (skipped with --quick: minutes of compile on 2 cores),
OpenVINO on the reference model (`openvino.convert_model` of the eager module; f32, and bf16 where the CPU has bf16
units), our `optimized` backend fp32/bf16, our `openvino` artifact fp32/bf16/int8, and ONNX Runtime on our ONNX artifact.
Timed round-robin (one call of each provider per round) so load changes on a shared machine hit all alike; reports
median and spread (p10..p90) per batch, the ratio to eager, the relative error to the eager reference and the mask
agreement with the fp32 reference on synthetic ultrasound frames, and the CPU's features (AVX-512 BF16, AMX, VNNI).
Writes `benchmarks/results/openvino-cpu.json`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import Predictor, settings  # noqa: E402
from engine.backends.reference import load_model  # noqa: E402
from engine.bench.machine import git_state, library_versions, machine_info  # noqa: E402
from engine.bench.measure import relative_error  # noqa: E402
from engine.bench.openvino_anchor import convert_reference, openvino_reference  # noqa: E402
from engine.bench.report import write_json  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.export.build import build_artifact  # noqa: E402
from engine.export.manifest import BatchRange  # noqa: E402
from engine.export.openvino import cpu_features, cpu_has_bf16  # noqa: E402
from engine.package import load_package, save_package  # noqa: E402
from engine.preprocess import preprocess_frames  # noqa: E402
from engine.synthetic import synthetic_frame  # noqa: E402
from engine.threads import apply_budget  # noqa: E402
from engine.weights import random_package_tensors  # noqa: E402

QUICK_MODEL = dict(width=192, layers=6, heads=3, head_dim=128, bottleneck=32, extract_layers=[1, 3, 5],
                   adapter_layers=list(range(6)))
OUT = ROOT / "benchmarks" / "results" / "openvino-cpu.json"


def providers(package_path: Path, workdir: Path, threads: int, compile_reference: bool, batch_max: int,
              failures: dict) -> dict:
    """name → callable(numpy batch) → numpy logits; a provider that cannot be made is recorded in `failures`."""
    package = load_package(package_path)
    reference = load_model(package.config, package.tensors).eval()
    bf16 = cpu_has_bf16()

    def torch_call(module):
        def run(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
        return run

    made = {"reference eager fp32": torch_call(reference)}
    if compile_reference:
        made["torch.compile(reference) fp32"] = torch_call(torch.compile(reference))
    conversion = None
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        name = f"OpenVINO(reference) {precision}"
        try:
            conversion = conversion or convert_reference(package_path)
            made[name] = openvino_reference(package_path, precision, threads, conversion).forward
        except Exception as exc:  # noqa: BLE001 — any conversion failure is a result of this benchmark
            failures[name] = f"{type(exc).__name__}: {str(exc)[-600:]}"
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        predictor = Predictor.load(package_path, backend="optimized", precision=precision)
        made[f"ours optimized {precision}"] = predictor.forward
    batch = BatchRange(1, 1, batch_max)
    ours = [("openvino", "fp32")] + ([("openvino", "bf16")] if bf16 else []) + [("openvino", "int8"), ("onnx", "fp32")]
    for backend, precision in ours:
        out = build_artifact(package, backend, precision, batch, workdir / f"{backend}-{precision}")
        made[f"ours {backend} artifact {precision}"] = Predictor.load(out).forward
    return made


def synthetic_batch(preprocessing: dict, batch: int, seed: int) -> np.ndarray:
    frames = [synthetic_frame(360 + 7 * i, 480 + 11 * i, seed=seed + i)[0] for i in range(batch)]
    return preprocess_frames(frames, preprocessing)


def measure(made: dict, x: np.ndarray, rounds: int) -> dict:
    """Round-robin timing (ms) after one warm-up call each."""
    outputs = {name: np.asarray(call(x)) for name, call in made.items()}
    samples = {name: [] for name in made}
    for _ in range(rounds):
        for name, call in made.items():
            start = time.perf_counter()
            call(x)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples, outputs


def summarize(samples: dict, outputs: dict, batch: int) -> list:
    expected = torch.from_numpy(outputs["reference eager fp32"])
    eager = statistics.median(samples["reference eager fp32"])
    rows = []
    for name, times in samples.items():
        ordered = sorted(times)
        median = statistics.median(ordered)
        actual = torch.from_numpy(outputs[name])
        rows.append({"provider": name, "batch": batch, "median_ms": round(median, 2),
                     "p10_ms": round(ordered[len(ordered) // 10], 2), "p90_ms": round(ordered[(9 * len(ordered)) // 10],
                                                                             2),
                     "images_per_s": round(1e3 * batch / median, 2), "eager_over_this": round(eager / median, 2),
                     "relative_error": relative_error(actual, expected),
                     "mask_agreement": float((actual.argmax(1) == expected.argmax(1)).float().mean())})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced model, batch 1, 5 rounds, no torch.compile")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile(reference)")
    parser.add_argument("--threads", type=int, default=2,
                        help="the thread budget every provider runs on (sets HT_ENGINE_THREADS)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    os.environ[settings.THREADS.name] = str(args.threads)  # the budget of every pool, here and in children
    apply_budget()
    batches, rounds = ((1,), 5) if args.quick else ((1, 8), args.rounds)
    config = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, **(QUICK_MODEL if args.quick else {}))
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        workdir = Path(tmp)
        save_package(workdir / "model.htpkg", config, random_package_tensors(config, seed=0))
        failures = {}
        compile_reference = not (args.quick or args.no_compile)
        made = providers(workdir / "model.htpkg", workdir, args.threads, compile_reference, max(batches), failures)
        rows = []
        for batch in batches:
            x = synthetic_batch(config.preprocessing, batch, seed=100 * batch)
            rows += summarize(*measure(made, x, rounds), batch)
    report = {"what": "OpenVINO on the reference model beside our backends (CPU, interleaved rounds)",
              "command": " ".join(["benchmarks/bench_openvino.py", *(argv if argv is not None else sys.argv[1:])]),
              "model": {"arch": config.arch, "task": config.task, "width": config.width, "layers": config.layers,
                        "quick": args.quick},
              "threads": args.threads, "rounds": rounds, "cpu_features": cpu_features(), "machine": machine_info("cpu"),
              "git": git_state(), "libraries": library_versions(), "rows": rows,
              "failed_providers": failures}
    write_json(report, args.out)
    for row in rows:
        print(f"{row['provider']:<34} b{row['batch']}  {row['median_ms']:>9.2f} ms  [{row['p10_ms']:.1f}..{row['p90_ms']:.1f}]"
              f"  x{row['eager_over_this']:<6} err {row['relative_error']:.2e}  masks {row['mask_agreement']:.4f}")
    for name, reason in failures.items():
        print(f"{name}: could not be made: {reason.splitlines()[-1] if reason else ''}")
    print(f"cpu features: {report['cpu_features']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
