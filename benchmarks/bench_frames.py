"""What a user feels on the CPU: `predict([frame])` (uint8 frame in, mask out) against `forward(x)` (a preprocessed
tensor in, logits out) on the full-size default model, and the host pre- and postprocessing on their own.

    .venv/bin/python benchmarks/bench_frames.py              # full measurement (run it on a quiet machine)
    .venv/bin/python benchmarks/bench_frames.py --quick      # a short smoke run of the same code (numbers: none)
    .venv/bin/python benchmarks/bench_frames.py --host-only  # the host preprocessing only: no model, seconds

Model: a seeded `biomedclip-vit-b16` seg package (as `ht-engine init` writes, without the output-bias calibration,
which changes masks, not timings), or `--package`. Providers: the `optimized` backend at bf16 and fp32, batch 1, at
480×640 and 1080×1920, plus the host steps at 1080×1920 (`Predictor.prepare`: gray + Pillow-exact resize + scale;
`Predictor.results`: masks from the head's grid logits), and the gray + resize step alone, gray and RGB frames at both
sizes, the engine's (`engine.preprocess.gray_resize`: the C extension `engine._frame_resize` where it is built) next
to Pillow's own (`convert("L")` + `resize`), each checked equal to Pillow before it is timed. Timed in interleaved
rounds (each round runs every
measurement once, its order rotated), so load changes on a shared machine hit all of them alike; every call is
timed with the package's own timer (`engine.bench.measure.host_call_ms`, host clock). Reported: median, p10/p90 and
spread `(p90 - p10) / median`, the predict/forward ratio (of medians, and the median of the per-round ratios), and
the issue's targets: bf16 predict ≤ 1.10× forward at 480×640 and ≤ 1.15× at 1080×1920; pre and post each ≤ 3 ms at
1080×1920. Writes `benchmarks/results/frames-cpu.json` (device, dtype, shapes, git sha, date, CPU model and flags).
`--host-only` times the resize step and the host preprocessing (`preprocess_frames` with the model's preprocessing,
what `Predictor.prepare` runs) without loading a model, and writes JSON only where `--json` says.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import Predictor
from engine.bench.machine import cpu_flags, machine_info, short_sha
from engine.bench.measure import LatencyStats, host_call_ms
from engine.bench.report import publish, results_path
from engine.config import ModelConfig
from engine.package import save_package
from engine.preprocess import gray_resize, native_resize_available, preprocess_frames
from engine.synthetic import synthetic_frame
from engine.weights import random_package_tensors

RESULTS = Path(__file__).resolve().parent / "results" / "frames-cpu.json"
SHAPES = ((480, 640), (1080, 1920))
PRECISIONS = ("bf16", "fp32")
HOST_SHAPE = (1080, 1920)
RESIZE_SIZE = 224
# The targets: predict/forward ratio per shape at bf16, host step medians (ms) at HOST_SHAPE.
RATIO_TARGETS = {(480, 640): 1.10, (1080, 1920): 1.15}
HOST_TARGET_MS = 3.0


def stats(samples: list) -> dict:
    out = LatencyStats.from_samples(samples, (10, 90, 99)).to_dict()
    out["spread"] = (out["p90_ms"] - out["p10_ms"]) / out["median_ms"] if out["median_ms"] > 0 else None
    return out


def seeded_package(directory: Path, seed: int) -> Path:
    config = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2)
    path = directory / f"biomedclip-vit-b16-seg-seed{seed}.htpkg"
    save_package(path, config, random_package_tensors(config, seed, calibrate=False))
    return path


def measurements(predictors: dict) -> dict:
    """name → zero-argument call, every one measured once per round."""
    calls = {}
    for precision, predictor in predictors.items():
        for height, width in SHAPES:
            frame = synthetic_frame(height, width, seed=height)[0]
            x = torch.from_numpy(predictor.preprocess([frame]))
            calls[f"predict {precision} {height}x{width}"] = lambda p=predictor, f=frame: p.predict([f])
            calls[f"forward {precision} {height}x{width}"] = lambda p=predictor, x=x: p.forward(x)
    host = predictors[PRECISIONS[0]]
    frame = synthetic_frame(*HOST_SHAPE, seed=1)[0]
    prepared = host.prepare([frame])
    outputs = host.infer_batch(prepared)
    calls["pre host"] = lambda: host.prepare([frame])
    calls["post host"] = lambda: host.results(outputs, [HOST_SHAPE])
    return {**calls, **resize_calls()}


def pillow_gray_resize(frame: np.ndarray) -> np.ndarray:
    image = Image.fromarray(frame)
    if frame.ndim == 3:
        image = image.convert("L")
    return np.asarray(image.resize((RESIZE_SIZE, RESIZE_SIZE), Image.Resampling.BICUBIC))


def resize_frames() -> dict:
    """`(height, width, "gray" | "rgb")` → a synthetic frame (RGB: three differently arranged copies of one)."""
    frames = {}
    for height, width in SHAPES:
        gray = synthetic_frame(height, width, seed=height)[0]
        frames[(height, width, "gray")] = gray
        frames[(height, width, "rgb")] = np.ascontiguousarray(np.stack([gray, gray[:, ::-1], gray[::-1]], axis=-1))
    return frames


def resize_calls() -> dict:
    """The gray + resize step, the engine's and Pillow's, per frame; each checked equal to Pillow first."""
    calls = {}
    for (height, width, kind), frame in resize_frames().items():
        if not np.array_equal(gray_resize(frame, RESIZE_SIZE, RESIZE_SIZE), pillow_gray_resize(frame)):
            raise AssertionError(f"engine.preprocess.gray_resize differs from Pillow at {height}x{width} {kind}")
        calls[f"resize engine {height}x{width} {kind}"] = lambda f=frame: gray_resize(f, RESIZE_SIZE, RESIZE_SIZE)
        calls[f"resize pillow {height}x{width} {kind}"] = lambda f=frame: pillow_gray_resize(f)
    return calls


def host_only_calls() -> dict:
    preprocessing = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2).preprocessing
    frame = synthetic_frame(*HOST_SHAPE, seed=1)[0]
    return {"pre host": lambda: preprocess_frames([frame], preprocessing), **resize_calls()}


def summarize_resize(samples: dict) -> list:
    rows = []
    for height, width, kind in resize_frames():
        engine = samples[f"resize engine {height}x{width} {kind}"]
        pillow = samples[f"resize pillow {height}x{width} {kind}"]
        rows.append({"height": height, "width": width, "frame": kind, "size": RESIZE_SIZE,
                     "engine_path": "engine._frame_resize" if native_resize_available() else "Pillow",
                     "engine_ms": stats(engine), "pillow_ms": stats(pillow),
                     "pillow_over_engine": statistics.median(pillow) / statistics.median(engine)})
    return rows


def run_rounds(calls: dict, rounds: int, warmup: int) -> dict:
    names = list(calls)
    samples = {name: [] for name in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                calls[name]()
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(host_call_ms(calls[name]))
    return samples


def summarize(samples: dict, predictors: dict) -> dict:
    cases = []
    for precision in PRECISIONS:
        for height, width in SHAPES:
            predict = samples[f"predict {precision} {height}x{width}"]
            forward = samples[f"forward {precision} {height}x{width}"]
            cases.append({
                "device": "cpu", "precision": precision, "batch": 1, "height": height, "width": width,
                "frame_path": predictors[precision].frame_path, "predict_ms": stats(predict),
                "forward_ms": stats(forward),
                "ratio_of_medians": statistics.median(predict) / statistics.median(forward),
                "median_ratio": statistics.median(p / f for p, f in zip(predict, forward))})
    host = {"height": HOST_SHAPE[0], "width": HOST_SHAPE[1], "pre_ms": stats(samples["pre host"]),
            "post_ms": stats(samples["post host"])}
    targets = []
    for case in cases:
        limit = RATIO_TARGETS.get((case["height"], case["width"]))
        if case["precision"] == "bf16" and limit is not None:
            targets.append({"target": f"bf16 predict / forward at {case['height']}x{case['width']}", "limit": limit,
                            "measured": case["ratio_of_medians"], "met": case["ratio_of_medians"] <= limit})
    for step in ("pre", "post"):
        median = host[f"{step}_ms"]["median_ms"]
        targets.append({"target": f"host {step} at {HOST_SHAPE[0]}x{HOST_SHAPE[1]} (ms)", "limit": HOST_TARGET_MS,
                        "measured": median, "met": median <= HOST_TARGET_MS})
    return {"cases": cases, "host": host, "targets": targets, "resize": summarize_resize(samples)}


def summarize_host_only(samples: dict) -> dict:
    median = statistics.median(samples["pre host"])
    host = {"height": HOST_SHAPE[0], "width": HOST_SHAPE[1], "pre_ms": stats(samples["pre host"])}
    target = {"target": f"host pre at {HOST_SHAPE[0]}x{HOST_SHAPE[1]} (ms)", "limit": HOST_TARGET_MS,
              "measured": median, "met": median <= HOST_TARGET_MS}
    return {"host": host, "targets": [target], "resize": summarize_resize(samples)}


def render_resize(rows: list) -> list:
    lines = [f"gray + resize to {RESIZE_SIZE}x{RESIZE_SIZE} ({rows[0]['engine_path']} vs Pillow's own):"]
    for row in rows:
        engine, pillow = row["engine_ms"], row["pillow_ms"]
        lines.append(f"  {row['height']:>4}x{row['width']:<4} {row['frame']:<4} engine {engine['median_ms']:.3f} ms "
                     f"(spread {engine['spread']:.2f}), Pillow {pillow['median_ms']:.3f} ms (spread "
                     f"{pillow['spread']:.2f}): Pillow takes {row['pillow_over_engine']:.1f}x the time")
    return lines


def render(report: dict) -> str:
    machine = report["machine"]
    lines = [f"frame path on {machine['cpu']['model']} ({machine['cpu']['torch_threads']} torch threads; "
             f"{', '.join(report['cpu_flags']) or 'no AVX-512/AMX flags'}), git {short_sha(machine['git']['sha'])}, "
             f"{machine['date']}, {report['settings']['rounds']} rounds, load average "
             f"{machine['cpu']['load_average_1m']:.1f}",
             f"{'prec':<5} {'frame':>9} {'path':<6} {'predict ms':>10} {'spread':>6} {'forward ms':>10} {'spread':>6} "
             f"{'ratio':>6} {'med ratio':>9}"]
    for case in report["cases"]:
        p, f = case["predict_ms"], case["forward_ms"]
        lines.append(f"{case['precision']:<5} {case['height']:>4}x{case['width']:<4} {case['frame_path']:<6} "
                     f"{p['median_ms']:>10.2f} {p['spread']:>6.2f} {f['median_ms']:>10.2f} {f['spread']:>6.2f} "
                     f"{case['ratio_of_medians']:>6.3f} {case['median_ratio']:>9.3f}")
    host = report["host"]
    lines.append(f"host at {host['height']}x{host['width']}: pre {host['pre_ms']['median_ms']:.2f} ms "
                 f"(spread {host['pre_ms']['spread']:.2f}), post {host['post_ms']['median_ms']:.2f} ms "
                 f"(spread {host['post_ms']['spread']:.2f})")
    lines += render_resize(report["resize"])
    for target in report["targets"]:
        lines.append(f"target {target['target']}: {target['measured']:.3f} <= {target['limit']:g}: "
                     f"{'met' if target['met'] else 'NOT met'}")
    return "\n".join(lines)


def render_host_only(report: dict) -> str:
    machine, host = report["machine"], report["host"]
    lines = [f"host preprocessing on {machine['cpu']['model']}, git {short_sha(machine['git']['sha'])}, "
             f"{machine['date']}, {report['settings']['rounds']} rounds, load average "
             f"{machine['cpu']['load_average_1m']:.1f}",
             f"host at {host['height']}x{host['width']}: pre {host['pre_ms']['median_ms']:.2f} ms "
             f"(spread {host['pre_ms']['spread']:.2f})", *render_resize(report["resize"])]
    for target in report["targets"]:
        lines.append(f"target {target['target']}: {target['measured']:.3f} <= {target['limit']:g}: "
                     f"{'met' if target['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, help="measure this seg package instead of seeded random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated package (default 0)")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, 1 warm-up round")
    parser.add_argument("--host-only", action="store_true",
                        help="time the host preprocessing only (no model); default 200 rounds")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the results go (default benchmarks/results/frames-cpu.json; with --quick or "
                             "--host-only none unless given, so a smoke run never replaces a measurement)")
    args = parser.parse_args(argv)
    rounds, warmup = (2, 1) if args.quick else (args.rounds, args.warmup)
    if args.host_only and not args.quick and args.rounds == parser.get_default("rounds"):
        rounds = 200
    if rounds < 1 or warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    if args.host_only:
        print(f"timing the host preprocessing, {rounds} rounds after {warmup} warm-up rounds", flush=True)
        samples = run_rounds(host_only_calls(), rounds, warmup)
        report = {"benchmark": "frames-cpu-host", "quick": args.quick, "machine": machine_info("cpu"),
                  "cpu_flags": cpu_flags(), "settings": {"rounds": rounds, "warmup_rounds": warmup,
                                                          "timer": "perf_counter_ns"},
                  **summarize_host_only(samples)}
        return publish(report, render_host_only(report), args.json)
    with tempfile.TemporaryDirectory(prefix="ht-bench-frames-") as scratch:
        path = args.package or seeded_package(Path(scratch), args.seed)
        print(f"loading the optimized backend ({', '.join(PRECISIONS)}) for {path.name}", flush=True)
        predictors = {precision: Predictor.load(path, backend="optimized", precision=precision)
                      for precision in PRECISIONS}
        if any(p.task != "seg" for p in predictors.values()):
            parser.error(f"{path} is not a seg package: the targets are for masks")
        print(f"timing {rounds} rounds after {warmup} warm-up rounds", flush=True)
        samples = run_rounds(measurements(predictors), rounds, warmup)
        report = {"benchmark": "frames-cpu", "quick": args.quick, "machine": machine_info("cpu"),
                  "cpu_flags": cpu_flags(), "model": {"source": str(args.package) if args.package else
                                                       f"seeded biomedclip-vit-b16 seg, seed {args.seed}",
                                                       "sha256": predictors[PRECISIONS[0]].sha256},
                  "settings": {"rounds": rounds, "warmup_rounds": warmup, "timer": "perf_counter_ns",
                               "torch_threads": torch.get_num_threads()},
                  **summarize(samples, predictors)}
    return publish(report, render(report), results_path(args.json, RESULTS, args.quick))


if __name__ == "__main__":
    sys.exit(main())
