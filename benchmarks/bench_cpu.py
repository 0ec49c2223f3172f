"""CPU benchmark of the optimized backend against the reference, side by side in one process.

    .venv/bin/python benchmarks/bench_cpu.py                       # full ViT-B seg, batches 1 and 8, 2 threads
    .venv/bin/python benchmarks/bench_cpu.py --task cls --reps 9   # other task / fewer repetitions

Providers: the reference model eager, `torch.compile(reference)` (default inductor settings), and the `optimized`
backend at each precision loaded through `Predictor.load`. Timed round-robin (one call of each provider per
round) so that load changes on a shared machine hit all providers alike; reports median, p90, spread, ratios to
both baselines (ratio of medians and median of the per-round ratios), the useful GFLOP/s (FLOPs of the optimized
model, engine.bench.flops) and its fraction of the GEMM rate measured in the same process at that precision.
Also measured: the first load (compile into an empty cache) and a second load in a fresh process (cache hit),
the error of bf16/int8 to fp32 on synthetic ultrasound frames, and a per-op profile of each optimized precision.
Writes `benchmarks/results/cpu.md` and `cpu.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine import Predictor, settings
from engine.bench.flops import count_flops
from engine.bench.machine import cpu_flags, cpu_model, git_state, short_sha
from engine.bench.measure import relative_error
from engine.config import AUTHORS_PREPROCESSING, ModelConfig
from engine.model import build_reference_model
from engine.package import read_package, save_package
from engine.preprocess import preprocess_frames
from engine.synthetic import synthetic_frame
from engine.threads import apply_budget
from engine.weights import random_package_tensors

# The repository this script is in: where results go, and what the fresh-process load imports (the same tree).
ROOT = Path(__file__).resolve().parents[1]

FRESH_LOAD = """
import sys, time
t = time.perf_counter()
import torch
torch.set_num_threads({threads})
from engine import Predictor
p = Predictor.load({path!r}, backend="optimized", precision={precision!r})
print(time.perf_counter() - t)
"""


def summary(times: list) -> dict:
    ordered = sorted(times)
    q = lambda f: ordered[min(len(ordered) - 1, int(round(f * (len(ordered) - 1))))]  # noqa: E731
    median = statistics.median(ordered)
    return {"median_ms": median * 1e3, "p90_ms": q(0.9) * 1e3, "p10_ms": q(0.1) * 1e3, "min_ms": ordered[0] * 1e3,
            "spread": (q(0.9) - q(0.1)) / median}


def gemm_ops(batch: int) -> tuple[dict, float]:
    """A ViT-B MLP-sized matmul `[197·B, 768] × [768, 3072]` at each precision, and its FLOPs: the GEMM rate
    that the model's own rates are compared with, timed in the same rounds as the models."""
    m, k, n = 197 * batch, 768, 3072
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    ab, wb = a.bfloat16(), w.bfloat16()
    aq = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g).t()
    ops = {"gemm fp32": lambda x: torch.nn.functional.linear(a, w),
           "gemm bf16": lambda x: torch.nn.functional.linear(ab, wb),
           "gemm int8": lambda x: torch._int_mm(aq, wq)}
    return ops, 2.0 * m * k * n


def fresh_process_load_seconds(path: Path, precision: str, threads: int, cache: Path) -> float:
    """`Predictor.load` in a new Python process (imports included, as a user's next run would pay them)."""
    env = dict(os.environ, HT_ENGINE_CACHE=str(cache), PYTHONPATH=str(ROOT))
    code = FRESH_LOAD.format(threads=threads, path=str(path), precision=precision)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"load of {precision} in a fresh process failed: {out.stderr[-2000:]}")
    inner = float(out.stdout.strip().splitlines()[-1])
    return min(inner, time.perf_counter() - start)


def synthetic_batch(count: int, cfg) -> torch.Tensor:
    frames = [synthetic_frame(300 + 16 * i, 400 - 8 * i, seed=100 + i)[0] for i in range(count)]
    return torch.from_numpy(preprocess_frames(frames, cfg.preprocessing))


def accuracy(predictors: dict, cfg, count: int) -> dict:
    images = synthetic_batch(count, cfg)
    with torch.inference_mode():
        base = predictors["fp32"].forward(images).double()
        result = {}
        for precision, predictor in predictors.items():
            if precision == "fp32":
                continue
            out = predictor.forward(images).double()
            entry = {"logit_rel_err": relative_error(out, base)}
            entry["argmax_agreement"] = (out.argmax(1) == base.argmax(1)).double().mean().item()
            result[precision] = entry
    return result


def profile_top(run, images, rows: int = 8) -> list:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        run(images)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(images)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total) for e in events[:rows]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="biomedclip-vit-b16")
    parser.add_argument("--task", default="seg", choices=["seg", "cls"])
    parser.add_argument("--package", type=Path, help="benchmark this package instead of seeded random weights")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2,
                        help="the thread budget every provider runs on (sets HT_ENGINE_THREADS)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu.md")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test of this script)")
    args = parser.parse_args(argv)
    os.environ[settings.THREADS.name] = str(args.threads)  # the budget of every pool, here and in children
    apply_budget()
    batches = [int(b) for b in args.batches.split(",")]
    precisions = args.precisions.split(",")
    work = Path(tempfile.mkdtemp(prefix="ht-bench-"))
    if args.package:
        path = args.package
        cfg, tensors, _ = read_package(path)
    else:
        small = dict(width=48, layers=4, heads=4, bottleneck=16, head_dim=24, image_size=112,
                     extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3],
                     preprocessing=dict(AUTHORS_PREPROCESSING, size=112)) if args.small else {}
        cfg = ModelConfig.for_arch(args.arch, args.task, 2 if args.task == "seg" else 4, **small)
        tensors = random_package_tensors(cfg, seed=0)
        path = work / "model.htpkg"
        save_package(path, cfg, tensors)
    load_avg_start = os.getloadavg()
    info = {"cpu": cpu_model(), "flags": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": short_sha(git_state()["sha"]),
            "arch": cfg.arch, "task": cfg.task, "filter": cfg.filter_kind, "reps": args.reps,
            "command": "python benchmarks/bench_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"# {info['cpu']} · torch {info['torch']} · {args.threads} threads · {cfg.arch} {cfg.task}", flush=True)

    providers = {}
    reference = build_reference_model(cfg, tensors)
    providers["reference eager"] = reference
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "cache-reference")  # a cold compile, like the others
    compiled_reference = torch.compile(reference)
    loads = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            compiled_reference(torch.rand(batch, 3, cfg.image_size, cfg.image_size))
    loads["torch.compile(reference)"] = {"first_s": time.perf_counter() - start}  # compile of every batch size
    providers["torch.compile(reference)"] = compiled_reference
    print(f"compiled reference in {loads['torch.compile(reference)']['first_s']:.1f} s", flush=True)

    predictors = {}
    for precision in precisions:
        cache = work / f"cache-{precision}"
        first = fresh_process_load_seconds(path, precision, args.threads, cache)  # empty cache: compiles
        second = fresh_process_load_seconds(path, precision, args.threads, cache)  # cache hit
        os.environ["HT_ENGINE_CACHE"] = str(cache)
        start = time.perf_counter()
        predictor = Predictor.load(path, backend="optimized", precision=precision)
        with torch.inference_mode():
            for batch in batches:  # a batch > 1 compiles the dynamic-batch graph once (first time: not cached)
                predictor.forward(torch.rand(batch, 3, cfg.image_size, cfg.image_size))
        first_all = time.perf_counter() - start
        loads[f"optimized {precision}"] = {"first_s": first, "second_s": second, "first_all_batches_s": first_all}
        predictors[precision] = predictor
        providers[f"optimized {precision}"] = predictor.runner.run
        print(f"optimized {precision}: first load {first:.1f} s, second load {second:.1f} s (fresh processes); "
              f"in-process load + first call of every batch size {first_all:.1f} s", flush=True)

    results = {}
    for batch in batches:
        images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(batch))
        gemms, gemm_flops = gemm_ops(batch)
        timed = dict(providers, **gemms)
        times = {name: [] for name in timed}
        with torch.inference_mode():
            for run in timed.values():
                run(images)
            for _ in range(args.reps):
                for name, run in timed.items():
                    start = time.perf_counter()
                    run(images)
                    times[name].append(time.perf_counter() - start)
        rates = {name.split()[-1]: gemm_flops / statistics.median(times.pop(name)) / 1e9 for name in gemms}
        flops = count_flops(cfg, pruned=True).total * batch
        rows = {}
        for name, t in times.items():
            row = summary(t)
            precision = name.split()[-1] if name.startswith("optimized") else "fp32"
            row["gflops"] = flops / (row["median_ms"] / 1e3) / 1e9
            row["gemm_rate_gflops"] = rates[precision]
            row["fraction_of_gemm_rate"] = row["gflops"] / rates[precision]
            for base in ("reference eager", "torch.compile(reference)"):
                row[f"ratio_to {base}"] = row["median_ms"] / summary(times[base])["median_ms"]
                row[f"paired_ratio_to {base}"] = statistics.median(a / b for a, b in zip(t, times[base]))
            rows[name] = row
        results[batch] = {"rows": rows, "gemm_rates": rates, "flops": flops}
        print(f"batch {batch}: " + ", ".join(f"{n} {r['median_ms']:.0f} ms" for n, r in rows.items()), flush=True)

    acc = accuracy(predictors, cfg, 8) if "fp32" in predictors else {}
    profiles = {}
    if not args.no_profile:
        images = torch.rand(1, 3, cfg.image_size, cfg.image_size)
        for precision, predictor in predictors.items():
            profiles[precision] = profile_top(predictor.runner.run, images)
        profiles["torch.compile(reference)"] = profile_top(compiled_reference, images)
    info["loadavg_start"], info["loadavg_end"] = load_avg_start, os.getloadavg()
    report = {"info": info, "loads": loads, "results": results, "accuracy": acc, "profiles": profiles}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    args.out.write_text(render(report))
    print(render(report))
    return 0


def render(report: dict) -> str:
    info = report["info"]
    lines = [f"# CPU benchmark: {info['arch']} {info['task']} ({info['filter']} filter)", "",
             f"- CPU: {info['cpu']}; ISA flags: {', '.join(info['flags']) or 'n/a'}",
             f"- {info['threads']} threads, torch {info['torch']}, git {info['git']}, {info['date']}",
             f"- command: `{info['command']}`; {info['reps']} round-robin repetitions per batch size",
             f"- load average at start / end: {tuple(round(x, 1) for x in info['loadavg_start'])} / "
             f"{tuple(round(x, 1) for x in info['loadavg_end'])} (a shared machine: read the spread)", ""]
    for batch, result in report["results"].items():
        rates = ", ".join(f"{p} {r:.0f}" for p, r in result["gemm_rates"].items())
        lines += [f"## batch {batch} ({result['flops'] / 1e9:.1f} GFLOP useful; GEMM rate measured in the same rounds, "
                  f"GFLOP/s: {rates})",
                  "",
                  "| provider | median ms | p90 ms | min ms | spread (p90-p10)/median | × eager | × compile(ref) "
                  "| paired × compile(ref) | GFLOP/s | % of GEMM rate |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in result["rows"].items():
            lines.append(f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['min_ms']:.1f} | "
                         f"{r['spread']:.2f} | {r['ratio_to reference eager']:.3f} | "
                         f"{r['ratio_to torch.compile(reference)']:.3f} | "
                         f"{r['paired_ratio_to torch.compile(reference)']:.3f} | {r['gflops']:.0f} | "
                         f"{100 * r['fraction_of_gemm_rate']:.0f}% |")
        lines.append("")
    lines += ["## Load time", "",
              "First and second `Predictor.load` each in a fresh Python process (imports included; the first with an "
              "empty cache, the second reusing it); then a load in the benchmark's process plus the first call of "
              "each batch size (the dynamic-batch graph compiles on the first batch > 1).", "",
              "| provider | first load s | in-process load + first call per batch size s | second load s |",
              "|---|---|---|---|"]
    for name, load in report["loads"].items():
        lines.append(f"| {name} | {load['first_s']:.1f} | {load.get('first_all_batches_s', float('nan')):.1f} | "
                     f"{load.get('second_s', float('nan')):.1f} |")
    lines.append("")
    if report["accuracy"]:
        lines += ["## Error to optimized fp32 (8 synthetic ultrasound frames)", "",
                  "| precision | max abs logit error / max abs logit | argmax agreement |", "|---|---|---|"]
        for precision, a in report["accuracy"].items():
            lines.append(f"| {precision} | {a['logit_rel_err']:.4f} | {100 * a['argmax_agreement']:.2f}% |")
        lines.append("")
    for name, rows in report["profiles"].items():
        lines += [f"## Profile: {name}, batch 1 (self CPU time, top ops)", "", "| op | ms | share |", "|---|---|---|"]
        lines += [f"| `{key}` | {ms:.1f} | {100 * share:.0f}% |" for key, ms, share in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
