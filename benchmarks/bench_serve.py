"""Serving on the CPU: `ht-engine serve` (a real Triton Inference Server) under Triton's own load generator,
perf_analyzer, with dynamic batching and without (two server starts), side by side.

    .venv/bin/python benchmarks/bench_serve.py            # the measurement (a few minutes; run it on a quiet machine)
    .venv/bin/python benchmarks/bench_serve.py --quick    # a smoke run of the same code on a small model (numbers: none)

Model: a seeded `biomedclip-vit-b16` seg package (2 classes, as `ht-engine init` writes, without the output-bias
calibration, which changes masks, not timings), or `--package`, built into an `openvino` artifact (batch 1..8) and
served from it: the engine's CPU deployment artifact (torch-free runtime inside the server; bf16 where the CPU has
AVX-512 BF16 or AMX, else fp32; `--precision` chooses), one model instance, max batch 8. Load: gray 480×640 phantom
frames (engine.phantom), one per request, over HTTP on loopback; per server start an untimed warm-up at the highest
concurrency, then `--requests` requests at each concurrency level (1, 4, 16), one bounded perf_analyzer run each
(`engine.serve.perf`: throughput = concurrency / mean latency, client percentiles, the server's queue and compute
times). perf_analyzer runs on the same cores as the server, as any loopback load test does.

Writes `benchmarks/results/serve-cpu.json` (machine, `lscpu`, date, versions, git sha, every command line) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from engine.bench.machine import host_info, library_versions, short_sha
from engine.bench.report import publish, results_path
from engine.bench.serving import format_serve_table, serve_library_versions
from engine.config import ModelConfig
from engine.export.build import build_artifact
from engine.export.manifest import BatchRange
from engine.export.openvino import cpu_has_bf16
from engine.package import save_package
from engine.serve import Batching, Ports, TritonServer, describe
from engine.serve.perf import LoadPlan, PerfAnalyzer, cached_input_path, measure, phantom_frames
from engine.version import __version__
from engine.weights import random_package_tensors

RESULTS = Path(__file__).resolve().parent / "results" / "serve-cpu.json"
ARCH = "biomedclip-vit-b16"
FRAME = (480, 640)
CONCURRENCIES = (1, 4, 16)
MAX_BATCH = 8
QUEUE_DELAY_US = 500  # `ht-engine serve`'s default
# The small model of --quick (bench_openvino.py's): the same code path in seconds, not minutes.
QUICK_MODEL = dict(width=192, layers=6, heads=3, head_dim=128, bottleneck=32, extract_layers=[1, 3, 5],
                   adapter_layers=list(range(6)))
LSCPU_FIELDS = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)")


def lscpu() -> dict:
    """The fields of `lscpu` that say what the CPU is (empty where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: fields[name].strip() for name in LSCPU_FIELDS if name in fields}


def seeded_package(directory: Path, seed: int, quick: bool) -> Path:
    config = ModelConfig.for_arch(ARCH, "seg", 2, **(QUICK_MODEL if quick else {}))
    path = directory / f"{ARCH}-seg-seed{seed}{'-quick' if quick else ''}.htpkg"
    save_package(path, config, random_package_tensors(config, seed, calibrate=False))
    return path


def openvino_artifact(package: Path, precision: str, directory: Path) -> Path:
    print(f"building the openvino {precision} artifact (batch 1..{MAX_BATCH}) of {package.name}", flush=True)
    return build_artifact(package, "openvino", precision, BatchRange(1, MAX_BATCH, MAX_BATCH),
                          directory / f"openvino-{precision}")


def serve_and_measure(model, batching: Batching, runtime: dict, plan_args: dict, frames, input_data: Path,
                      analyzer: PerfAnalyzer) -> dict:
    """Start a server with `batching`, run the load against it, stop it; the run as a dict."""
    started = time.perf_counter()
    with TritonServer(model, batching, runtime, ports=Ports(0, 0, 0)) as server:
        ready_s = time.perf_counter() - started
        print(f"server ready in {ready_s:.1f} s at http {server.http_url}", flush=True)
        run = measure(LoadPlan(server.http_url, "http", CONCURRENCIES, **plan_args), frames, input_data, analyzer,
                      progress=lambda message: print(f"  {message}", flush=True))
        alive = server.alive()
    return {"batching": {"max_batch": batching.max_batch, "dynamic": batching.max_queue_delay_us is not None,
                         "max_queue_delay_us": batching.max_queue_delay_us, "instances": batching.instances},
            "server_ready_s": ready_s, "server_alive_after": alive, **run.to_dict()}


def render(report: dict) -> str:
    machine, cpu = report["machine"], report["lscpu"]
    names, levels = [], []
    for config in report["configs"]:
        batching = config["batching"]
        name = (f"dynamic, max {batching['max_batch']}, {batching['max_queue_delay_us']} µs" if batching["dynamic"]
                else "off")
        names += [name] * len(config["levels"])
        levels += config["levels"]
    settings = report["settings"]
    head = (f"`ht-engine serve` on {cpu.get('Model name', machine['cpu']['model'])} ({cpu.get('CPU(s)', '?')} "
            f"logical cores), {report['model']['description']}, served from its {report['model']['backend']} "
            f"{report['model']['precision']} artifact; {settings['requests']} requests of one {FRAME[0]}×{FRAME[1]} gray "
            f"phantom frame per level over HTTP on loopback (perf_analyzer {report['perf_analyzer_version']}, "
            f"Triton {report['configs'][0]['server']['triton_version']}); git {short_sha(machine['git']['sha'])}, "
            f"{machine['date']}, load average {machine['cpu']['load_average_1m']:.1f} at the start")
    return head + "\n\n" + format_serve_table(levels, markdown=True, label=("batching", names))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, help="serve this seg package instead of seeded random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated package and the frames (default 0)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="the artifact's precision (default bf16 where the CPU has bf16 units, else fp32)")
    parser.add_argument("--requests", type=int, default=128, help="requests per concurrency level (default 128)")
    parser.add_argument("--warmup-requests", type=int, default=32,
                        help="untimed requests at the highest concurrency per server start (default 32)")
    parser.add_argument("--run-timeout", type=float, default=300.0,
                        help="seconds one perf_analyzer run may take (default 300)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a small model, 16 requests per level")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the results go (default benchmarks/results/serve-cpu.json; with --quick none "
                             "unless given, so a smoke run never replaces a measurement)")
    args = parser.parse_args(argv)
    requests, warmup = (16, 16) if args.quick else (args.requests, args.warmup_requests)
    analyzer = PerfAnalyzer.load()
    frames = phantom_frames(*FRAME, seed=args.seed)
    input_data = cached_input_path(*FRAME, len(frames), args.seed)
    precision = args.precision or ("bf16" if cpu_has_bf16() else "fp32")
    runtime = {"backend": None, "device": "cpu", "precision": precision}  # the artifact's own backend
    plan_args = {"requests": requests, "warmup_requests": warmup, "timeout_s": args.run_timeout}
    machine = host_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ht-bench-serve-") as scratch:
        path = args.package or seeded_package(Path(scratch), args.seed, args.quick)
        if describe(path).task != "seg":
            parser.error(f"{path} is not a seg package")
        model = describe(openvino_artifact(path, precision, Path(scratch)))
        configs = []
        for batching in (Batching(MAX_BATCH, QUEUE_DELAY_US, 1), Batching(MAX_BATCH, None, 1)):
            print(f"dynamic batching {'on' if batching.max_queue_delay_us is not None else 'off'}: starting the "
                  f"server (openvino {precision} artifact of {path.name})", flush=True)
            configs.append(serve_and_measure(model, batching, runtime, plan_args, frames, input_data, analyzer))
    description = (str(args.package) if args.package else
                   f"seeded {ARCH} seg{' (small --quick model)' if args.quick else ''}, 2 classes, seed {args.seed}")
    report = {"benchmark": "serve-cpu", "quick": args.quick, "engine_version": __version__, "machine": machine,
              "lscpu": lscpu(),
              "libraries": {**library_versions(), **serve_library_versions(), "openvino": metadata.version("openvino")},
              "perf_analyzer_version": analyzer.version,
              "model": {"description": description, "package_sha256": model.package_sha256, "backend": "openvino",
                        "precision": precision, "batch": [1, MAX_BATCH, MAX_BATCH], "frame": list(FRAME)},
              "settings": {"concurrencies": list(CONCURRENCIES), **plan_args, "protocol": "http"},
              "wall_s": time.perf_counter() - started, "configs": configs}
    print()
    return publish(report, render(report), results_path(args.json, RESULTS, args.quick))


if __name__ == "__main__":
    sys.exit(main())
