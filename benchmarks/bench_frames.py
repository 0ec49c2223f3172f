"""What a user feels on the CPU: `predict([frame])` (uint8 frame in, mask out) against `forward(x)` (a preprocessed
tensor in, logits out) on the full-size default model, and the host pre- and postprocessing on their own.

    .venv/bin/python benchmarks/bench_frames.py            # full measurement (run it on a quiet machine)
    .venv/bin/python benchmarks/bench_frames.py --quick    # a short smoke run of the same code (numbers: none)

Model: a seeded `biomedclip-vit-b16` seg package (as `ht-engine init` writes, without the output-bias calibration,
which changes masks, not timings), or `--package`. Providers: the `optimized` backend at bf16 and fp32, batch 1, at
480×640 and 1080×1920, plus the host steps at 1080×1920 (`Predictor.prepare`: Pillow's gray + resize + scale;
`Predictor.results`: masks from the head's grid logits). Timed in interleaved rounds (each round runs every
measurement once, its order rotated), so load changes on a shared machine hit all of them alike; every call is
timed with the package's own timer (`engine.bench.measure.host_call_ms`, host clock). Reported: median, p10/p90 and
spread `(p90 - p10) / median`, the predict/forward ratio (of medians, and the median of the per-round ratios), and
the issue's targets: bf16 predict ≤ 1.10× forward at 480×640 and ≤ 1.15× at 1080×1920; pre and post each ≤ 3 ms at
1080×1920. Writes `benchmarks/results/frames-cpu.json` (device, dtype, shapes, git sha, date, CPU model and flags).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from engine import Predictor
from engine.bench.machine import cpu_flags, machine_info, short_sha
from engine.bench.measure import LatencyStats, host_call_ms
from engine.bench.report import write_json
from engine.config import ModelConfig
from engine.package import save_package
from engine.synthetic import synthetic_frame
from engine.weights import random_package_tensors

RESULTS = Path(__file__).resolve().parent / "results" / "frames-cpu.json"
SHAPES = ((480, 640), (1080, 1920))
PRECISIONS = ("bf16", "fp32")
HOST_SHAPE = (1080, 1920)
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
    return calls


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
    return {"cases": cases, "host": host, "targets": targets}


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
    parser.add_argument("--json", type=Path, default=None,
                        help="where the results go (default benchmarks/results/frames-cpu.json; with --quick none "
                             "unless given, so a smoke run never replaces a measurement)")
    args = parser.parse_args(argv)
    rounds, warmup = (2, 1) if args.quick else (args.rounds, args.warmup)
    if rounds < 1 or warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
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
    print(render(report))
    out = args.json or (None if args.quick else RESULTS)
    if out is not None:
        write_json(report, out)
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
