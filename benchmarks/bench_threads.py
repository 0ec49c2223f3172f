"""The thread budget's choices, measured: ONNX Runtime's spin-waiting and OpenVINO's CPU pinning, each variant beside
the others in one process, in interleaved rounds (`engine.threads` took its settings from these numbers).

    .venv/bin/python benchmarks/bench_threads.py            # test-size and full-size models, 15 rounds (~2 min)
    .venv/bin/python benchmarks/bench_threads.py --quick    # test-size model, 3 rounds: checks it runs (numbers: none)

Models: the tests' small seeded seg model (`tests/artifact_helpers.py::small_package`: width 48, 4 layers, 96×96) and
the full-size seeded `biomedclip-vit-b16` seg model (as `ht-engine init` writes, without the output-bias calibration),
each built into an fp32 ONNX artifact and an fp32 OpenVINO artifact (batch 1). Every variant is a Predictor over a
session (compiled model) made with the budget's settings (`engine.threads.onnxruntime_settings`, `openvino_config`)
and one setting changed: ONNX Runtime `spin` (intra-op threads spin-wait: ORT's default), `spin-stop` (they spin
inside a run and stop when it returns: `session.force_spinning_stop`), `no-spin` (`session.intra_op.allow_spinning`
0); OpenVINO `pinned` (its CPU plugin's default `ENABLE_CPU_PINNING`) and `unpinned`.

Situations, each timed with the package's host timer (`engine.bench.measure.host_call_ms`):
- `after-torch`: `predict` of a gray 480×640 frame right after a torch op on torch's pool (a 768² fp32 matmul, as a
  bench's eager baseline or a torch stage leaves the pool), and that torch op timed right after the `predict`
  (`torch-after`: what the inference pool's spinning costs the stage that follows it), beside the torch op after
  the pause alone (`torch-alone`);
- `stream`: one frame step of a stream: a second Python thread preprocesses the next 480×640 frame and makes the
  masks of the last one (the host resize, numpy) while this thread runs inference; timed: inference, the
  pre/post thread's work, and the step (both done).
Rounds run every variant of every situation once (order rotated each round), 50 ms apart so one variant's pool
settles before the next runs. Reported per entry: median, p10/p90, spread `(p90 - p10) / median`; per variant and
entry its time over the library default's in the same round (median and p10/p90 of those paired ratios, and in how
many rounds it was faster); and the 1-minute load average before and after each model's rounds.
Writes `benchmarks/results/threads-cpu.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.artifacts import open_artifact  # noqa: E402
from engine.bench.machine import machine_info, short_sha  # noqa: E402
from engine.bench.measure import LatencyStats, host_call_ms  # noqa: E402
from engine.bench.report import publish, results_path  # noqa: E402
from engine.config import AUTHORS_PREPROCESSING, ModelConfig  # noqa: E402
from engine.export.build import build_artifact  # noqa: E402
from engine.export.manifest import INPUT_NAME, BatchRange  # noqa: E402
from engine.export.openvino import INFERENCE_PRECISION  # noqa: E402
from engine.package import load_package, save_package  # noqa: E402
from engine.runner import Runner  # noqa: E402
from engine.runtime import Predictor  # noqa: E402
from engine.synthetic import synthetic_frame  # noqa: E402
from engine.threads import (  # noqa: E402
    ORT_FORCE_SPINNING_STOP,
    ORT_INTRA_OP_SPINNING,
    apply_budget,
    budget,
    onnxruntime_session_options,
    onnxruntime_settings,
    openvino_config,
)
from engine.weights import random_package_tensors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "threads-cpu.json"
FRAME_SHAPE = (480, 640)
TORCH_OP_SIZE = 768
PAUSE_S = 0.05
# The tests' small model (tests/helpers.py::small_config at 96×96, as tests/artifact_helpers.py::small_package).
TEST_MODEL = dict(width=48, layers=4, heads=4, bottleneck=16, head_dim=24, image_size=96, patch_size=16,
                  extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3],
                  preprocessing=dict(AUTHORS_PREPROCESSING, size=96))
ORT_VARIANTS = {"spin": {ORT_INTRA_OP_SPINNING: "1"},
                "spin-stop": {ORT_INTRA_OP_SPINNING: "1", ORT_FORCE_SPINNING_STOP: "1"},
                "no-spin": {ORT_INTRA_OP_SPINNING: "0"}}
OV_VARIANTS = {"pinned": {"ENABLE_CPU_PINNING": True}, "unpinned": {"ENABLE_CPU_PINNING": False}}
# Each library's own default, what the other variants are compared with round by round.
DEFAULT_VARIANT = {"onnx": "spin", "openvino": "pinned"}


def seeded_package(directory: Path, name: str, seed: int) -> Path:
    config = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, **(TEST_MODEL if name == "test" else {}))
    path = directory / f"{name}.htpkg"
    save_package(path, config, random_package_tensors(config, seed, calibrate=False))
    return path


def _predictor(run, artifact) -> Predictor:
    model = artifact.manifest["model"]
    return Predictor(Runner(run=run, uses_torch=False, device="cpu", precision="fp32", max_batch=1),
                     task=model["task"], classes=model["classes"], preprocessing=artifact.manifest["preprocessing"],
                     image_size=model["image_size"], backend=artifact.manifest["backend"], source=artifact.directory,
                     sha256=artifact.manifest["package_sha256"])


def onnx_variant(artifact, entries: dict) -> Predictor:
    import onnxruntime

    ort_settings = onnxruntime_settings()
    ort_settings["config_entries"] = dict(entries)
    options = onnxruntime_session_options(ort_settings)
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(artifact.model_file), options, providers=["CPUExecutionProvider"])
    names = [output["name"] for output in artifact.manifest["outputs"]]
    return _predictor(lambda batch: session.run(names, {INPUT_NAME: batch})[0], artifact)


def openvino_variant(artifact, properties: dict) -> Predictor:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(artifact.model_file))
    shape = list(model.inputs[0].get_partial_shape())
    model.reshape({model.inputs[0].get_any_name(): [1] + [dim.get_length() for dim in shape[1:]]})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION["fp32"],
              **openvino_config(), **properties}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    predictor = _predictor(lambda batch: (request.infer({0: np.ascontiguousarray(batch)}),
                                          request.get_output_tensor(0).data.copy())[1], artifact)
    predictor.compiled_properties = {key: str(compiled.get_property(key))
                                     for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING")}
    return predictor


class PrePostThread:
    """The stream's other stages on a thread of their own: on each `start()`, preprocess a frame and make the masks of
    the last outputs (what the pipeline's pre and post stages do beside inference); `wait()` returns its ms."""

    def __init__(self, predictor: Predictor, frame: np.ndarray):
        self.predictor, self.frame = predictor, frame
        self.outputs = predictor.infer_batch(predictor.prepare([frame]))
        self.go, self.done = threading.Event(), threading.Event()
        self.elapsed_ms, self.stopping = 0.0, False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        self.predictor.prepare([self.frame])
        self.predictor.results(self.outputs, [self.frame.shape[:2]])

    def _loop(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            if self.stopping:
                return
            self.elapsed_ms = host_call_ms(self._work)
            self.done.set()

    def start(self) -> None:
        self.done.clear()
        self.go.set()

    def wait(self) -> float:
        self.done.wait()
        return self.elapsed_ms

    def close(self) -> None:
        self.stopping = True
        self.go.set()
        self.thread.join()


def torch_op():
    a = torch.rand(TORCH_OP_SIZE, TORCH_OP_SIZE, generator=torch.Generator().manual_seed(5))
    return lambda: torch.mm(a, a)


def measurements(variants: dict, frame: np.ndarray) -> tuple:
    """`(calls, closers)`: name → zero-argument call returning `{entry: ms}`, each run once per round."""
    op = torch_op()
    calls, closers = {"torch-alone": lambda: {"torch": host_call_ms(op)}}, []
    for name, predictor in variants.items():
        prepared = predictor.prepare([frame])

        def after_torch(p=predictor):
            op()
            predict_ms = host_call_ms(lambda: p.predict([frame]))
            return {"predict": predict_ms, "torch-after": host_call_ms(op)}

        side = PrePostThread(predictor, frame)
        closers.append(side.close)

        def stream_step(p=predictor, side=side, prepared=prepared):
            start = time.perf_counter_ns()
            side.start()
            infer_ms = host_call_ms(lambda: p.infer_batch(prepared))
            side_ms = side.wait()
            return {"infer": infer_ms, "pre+post thread": side_ms, "step": (time.perf_counter_ns() - start) / 1e6}

        calls[f"after-torch {name}"] = after_torch
        calls[f"stream {name}"] = stream_step
    return calls, closers


def run_rounds(calls: dict, rounds: int, warmup: int) -> dict:
    names = list(calls)
    samples = {}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(PAUSE_S)
            timed = calls[name]()
            if index >= warmup:
                for entry, ms in timed.items():
                    samples.setdefault(f"{name} {entry}", []).append(ms)
    return samples


def stats(samples: list) -> dict:
    out = LatencyStats.from_samples(samples, (10, 90)).to_dict()
    out["spread"] = (out["p90_ms"] - out["p10_ms"]) / out["median_ms"] if out["median_ms"] > 0 else None
    return out


def paired_ratios(samples: dict) -> dict:
    """Per entry, its time over the library default's in the same round (adjacent in time, so a load change on a
    shared machine hits both): median and p10/p90 of the per-round ratios."""
    ratios = {}
    for key, values in samples.items():
        situation, backend, variant, entry = key.split(" ", 3) if key.count(" ") >= 3 else (None,) * 4
        if backend not in DEFAULT_VARIANT or variant == DEFAULT_VARIANT[backend]:
            continue
        baseline = samples[f"{situation} {backend} {DEFAULT_VARIANT[backend]} {entry}"]
        per_round = np.asarray(values) / np.asarray(baseline)
        ratios[f"{key} / {DEFAULT_VARIANT[backend]}"] = {
            "median": float(np.median(per_round)), "p10": float(np.percentile(per_round, 10)),
            "p90": float(np.percentile(per_round, 90)), "rounds_faster": int((per_round < 1).sum()),
            "rounds": int(per_round.size)}
    return ratios


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def measure_model(workdir: Path, name: str, rounds: int, warmup: int) -> dict:
    package_path = seeded_package(workdir, name, seed=0)
    package = load_package(package_path)
    artifacts = {backend: open_artifact(build_artifact(package, backend, "fp32", BatchRange(1, 1, 1),
                                                       workdir / f"{name}-{backend}"))
                 for backend in ("onnx", "openvino")}
    variants = {f"onnx {variant}": onnx_variant(artifacts["onnx"], entries)
                for variant, entries in ORT_VARIANTS.items()}
    variants.update({f"openvino {variant}": openvino_variant(artifacts["openvino"], properties)
                     for variant, properties in OV_VARIANTS.items()})
    frame = synthetic_frame(*FRAME_SHAPE, seed=7)[0]
    calls, closers = measurements(variants, frame)
    load_before = load_average()
    try:
        samples = run_rounds(calls, rounds, warmup)
    finally:
        for close in closers:
            close()
    load_after = load_average()
    entries = {key: stats(values) for key, values in samples.items()}
    return {"model": name, "image_size": package.config.image_size, "load_average_1m": [load_before, load_after],
            "openvino_compiled": {key: p.compiled_properties for key, p in variants.items()
                                  if hasattr(p, "compiled_properties")},
            "entries": entries, "ratios_to_default": paired_ratios(samples), "samples_ms": samples}


def render(report: dict) -> str:
    machine = report["machine"]
    lines = [f"thread budget A/B, {machine['cpu']['model']}, git {short_sha(machine['git']['sha'])}"]
    for model in report["models"]:
        before, after = model["load_average_1m"]
        lines.append(f"\n{model['model']} model ({model['image_size']}px), load average {before:.2f} → {after:.2f}")
        for key, entry in sorted(model["entries"].items()):
            lines.append(f"  {key:<44} {entry['median_ms']:8.2f} ms  [{entry['p10_ms']:.2f}..{entry['p90_ms']:.2f}]"
                         f"  spread {entry['spread']:.2f}")
        for key, ratio in sorted(model["ratios_to_default"].items()):
            lines.append(f"  {key:<60} × {ratio['median']:.3f} [{ratio['p10']:.3f}..{ratio['p90']:.3f}]  faster in "
                         f"{ratio['rounds_faster']}/{ratio['rounds']} rounds")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test-size model only, 3 rounds (numbers: none)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--models", default="test,full", help="comma-separated: test, full")
    parser.add_argument("--json", type=Path, default=None, help=f"where to write the results (default {RESULTS}, "
                        "none with --quick unless given)")
    args = parser.parse_args(argv)
    rounds, warmup = (3, 1) if args.quick else (args.rounds, args.warmup)
    models = ["test"] if args.quick else args.models.split(",")
    if rounds < 1 or warmup < 0 or not set(models) <= {"test", "full"}:
        parser.error("--rounds must be >= 1, --warmup >= 0, --models names test and/or full")
    apply_budget()
    with tempfile.TemporaryDirectory(prefix="ht-bench-threads-") as scratch, torch.inference_mode():
        measured = [measure_model(Path(scratch), name, rounds, warmup) for name in models]
    report = {"benchmark": "threads-cpu", "quick": args.quick, "machine": machine_info("cpu"), "budget": budget(),
              "settings": {"rounds": rounds, "warmup_rounds": warmup, "frame": list(FRAME_SHAPE),
                           "torch_op": f"mm {TORCH_OP_SIZE}x{TORCH_OP_SIZE} fp32", "pause_s": PAUSE_S,
                           "timer": "perf_counter_ns", "onnxruntime_variants": ORT_VARIANTS,
                           "openvino_variants": {k: {p: str(v) for p, v in props.items()}
                                                 for k, props in OV_VARIANTS.items()}},
              "models": measured}
    return publish(report, render(report), results_path(args.json, RESULTS, args.quick))


if __name__ == "__main__":
    sys.exit(main())
