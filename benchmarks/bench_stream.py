"""Stream benchmark: frames per second and end-to-end latency of the streaming runtime on a phantom cine.

For each input rate (default 30 and 60 fps) a phantom cine is written as MP4 at that rate and streamed in real
time (frames arrive at the file's own rate, as from a scanner) through `engine.stream.stream`, the code behind
`ht-engine stream`, under each policy (default `latest` and `all`). Printed as a table; `--json` keeps the
machine, the settings and every run's full stream report.

    python benchmarks/bench_stream.py                              # seeded ViT-B/16 seg package, CPU
    python benchmarks/bench_stream.py model.htpkg --backend optimized --device cuda --frames 600 --max-batch 4

Needs the `stream` extra (PyAV for the MP4). `latest` at an input rate above what the backend sustains drops
frames and keeps latency bounded; `all` processes every frame and its latency grows with the backlog.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?", type=Path, help=".htpkg package or built artifact (default: seeded)")
    parser.add_argument("--arch", default="biomedclip-vit-b16")
    parser.add_argument("--task", default="seg", choices=("seg", "cls"))
    parser.add_argument("--backend", default=None, help="default: optimized where available, else reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--frames", type=int, default=60, help="frames per cine (default 60)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--rates", default="30,60", help="input frame rates, comma-separated (default 30,60)")
    parser.add_argument("--policies", default="latest,all", help="comma-separated (default latest,all)")
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write machine, settings and stream reports here")
    return parser.parse_args(argv)


def seeded_package(arch: str, task: str, seed: int, directory: Path) -> Path:
    from engine.config import ModelConfig
    from engine.package import save_package
    from engine.weights import random_package_tensors

    config = ModelConfig.for_arch(arch, task, 2)
    path = directory / f"{arch}-{task}-seed{seed}.htpkg"
    save_package(path, config, random_package_tensors(config, seed))
    return path


def main(argv=None) -> int:
    from engine import Predictor, available_backends
    from engine.bench.machine import machine_info
    from engine.phantom import phantom_cine, write_video
    from engine.stream import stream

    args = parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    policies = [policy.strip() for policy in args.policies.split(",")]
    backend = args.backend or ("optimized" if "optimized" in available_backends(args.device) else "reference")
    runs = []
    with tempfile.TemporaryDirectory(prefix="ht-bench-stream-") as scratch:
        scratch = Path(scratch)
        source = args.artifact
        if source is None:
            print(f"writing a seeded {args.arch} {args.task} package", flush=True)
            source = seeded_package(args.arch, args.task, args.seed, scratch)
        start = time.perf_counter()
        predictor = Predictor.load(source, backend=backend, device=args.device, precision=args.precision)
        print(f"loaded {source} on {backend}/{args.precision}/{args.device} in {time.perf_counter() - start:.1f} s",
              flush=True)
        cine = phantom_cine(args.frames, args.height, args.width, fps=rates[0], seed=args.seed)
        for rate in rates:
            video = scratch / f"phantom_{rate:g}fps.mp4"
            write_video(video, cine.frames, fps=rate)
            for policy in policies:
                print(f"streaming {args.frames} frames at {rate:g} fps, policy {policy}", flush=True)
                report = stream(predictor, str(video), policy=policy, realtime=True, max_batch=args.max_batch,
                                context={"policy": policy, "input_rate_fps": rate, "backend": backend})
                runs.append(report)
    print()
    print(format_table(runs))
    if args.json is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        settings["backend"] = backend
        result = {"benchmark": "ht-engine stream", "machine": machine_info(args.device), "settings": settings,
                  "runs": runs}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"report: {args.json}")
    return 0


def format_table(runs: list) -> str:
    header = ("policy", "input fps", "frames in", "processed", "dropped", "out fps", "e2e p50 ms", "e2e p95 ms",
              "e2e p99 ms", "e2e max ms", "infer p50 ms")
    rows = [header]
    for run in runs:
        e2e, infer = run["latency_ms"]["end_to_end"], run["latency_ms"]["infer"]
        rows.append((run["policy"], f"{run['input_rate_fps']:g}", str(run["frames_in"]), str(run["processed"]),
                     str(run["dropped"]), f"{run['throughput_fps']:.2f}", *(f"{e2e.get(k, 0.0):.1f}" for k in
                     ("p50", "p95", "p99", "max")), f"{infer.get('p50', 0.0):.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


if __name__ == "__main__":
    sys.exit(main())
