"""The optimized CPU path's pieces, each beside what it replaced, interleaved in one process.

    .venv/bin/python benchmarks/bench_cpu_block.py            # full-size ViT-B/16 seg, 25 rounds (~4 min on 2 cores)
    .venv/bin/python benchmarks/bench_cpu_block.py --quick    # 3 rounds: checks that it runs (numbers: none)

Sections (`--sections`, comma-separated; all by default), every case timed round-robin with the host timer
(`engine.bench.measure.host_call_ms`), 2 threads unless `HT_ENGINE_THREADS` says otherwise:
- `gemm`: the block's dense layers at 197 tokens (qkv 768→2304, fc1 768→3072 with its GELU, fc2 3072→768, proj
  768→768), fp32 and bf16: `torch.addmm` (+ `F.gelu` for fc1) against `ht_engine::onednn_linear` (GELU as a oneDNN
  post-op; `engine.optimize.onednn`). bf16 only where oneDNN has bf16 kernels.
- `spatial`: one adapter's `adapter_spatial` compiled with `torch.compile`, torch provider (unfold + batched dot)
  against `CpuAdapterKernels` (`engine.optimize.cpu_kernels`), batch 1 and 4, fp32 and bf16 `z`.
- `block`: one compiled transformer block with its adapter at batch 1, bf16 and fp32: `before` (torch provider,
  `nn.Linear`; fp32 through oneDNN as it already was) against `now` (the CPU backend's model: `CpuAdapterKernels`
  and `engine.optimize.cpu.prepare`), with a `torch.profiler` breakdown of one `now` and one `before` run (inductor's
  kernel profile on).
Reported per case: median, p10/p90 (ms) and the median of the per-round ratio now/before with its p10/p90.
Writes `benchmarks/results/cpu-block.json` (not with --quick unless --json is given).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backends.optimized import build_model  # noqa: E402
from engine.bench.machine import machine_info  # noqa: E402
from engine.bench.measure import host_call_ms  # noqa: E402
from engine.bench.report import publish, results_path  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.optimize.cpu import inductor_cache_dir, prepare  # noqa: E402
from engine.optimize.cpu_kernels import CpuAdapterKernels  # noqa: E402
from engine.optimize.kernels import TorchAdapterKernels  # noqa: E402
from engine.optimize.onednn import onednn_bf16_supported, onednn_linear, onednn_linears  # noqa: E402
from engine.package import load_package, save_package  # noqa: E402
from engine.threads import apply_budget, budget  # noqa: E402
from engine.weights import random_package_tensors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu-block.json"
SECTIONS = ("gemm", "spatial", "block")
TOKENS = 197
GEMMS = {"qkv": (768, 2304, "none"), "fc1": (768, 3072, "gelu"), "fc2": (3072, 768, "none"), "proj": (768, 768, "none")}
BLOCK = 3  # a block with an adapter (every block of the seg model has one)


def interleave(cases: dict, rounds: int, warmup: int = 2) -> dict:
    """`{name: [ms per round]}`: every case once per round, in a rotated order."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            samples[name].append(host_call_ms(cases[name]))
    return samples


def summary(samples: list) -> dict:
    return {"median_ms": statistics.median(samples), "p10_ms": float(np.percentile(samples, 10)),
            "p90_ms": float(np.percentile(samples, 90)), "rounds": len(samples)}


def paired(now: list, before: list) -> dict:
    ratios = [a / b for a, b in zip(now, before)]
    return {"median": statistics.median(ratios), "p10": float(np.percentile(ratios, 10)),
            "p90": float(np.percentile(ratios, 90))}


def compare(pairs: dict, rounds: int) -> dict:
    """`pairs`: `{label: (before, now)}` callables, all timed interleaved; per label both summaries and the ratio."""
    cases = {f"{label}/{side}": call for label, calls in pairs.items() for side, call in zip(("before", "now"), calls)}
    samples = interleave(cases, rounds)
    return {label: {"before": summary(samples[f"{label}/before"]), "now": summary(samples[f"{label}/now"]),
                    "now_over_before": paired(samples[f"{label}/now"], samples[f"{label}/before"])}
            for label in pairs}


def gemm_section(rounds: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    dtypes = [torch.float32] + ([torch.bfloat16] if onednn_bf16_supported() else [])
    pairs = {}
    for dtype in dtypes:
        for name, (inputs, outputs, activation) in GEMMS.items():
            x = torch.randn(TOKENS, inputs, generator=generator).to(dtype)
            weight = (torch.randn(outputs, inputs, generator=generator) * inputs ** -0.5).to(dtype)
            bias = torch.randn(outputs, generator=generator).to(dtype)

            def before(x=x, weight=weight, bias=bias, activation=activation):
                y = torch.addmm(bias, x, weight.t())
                return F.gelu(y) if activation == "gelu" else y

            def now(x=x, weight=weight, bias=bias, activation=activation):
                return onednn_linear(x, weight, bias, activation)

            pairs[f"{name} {str(dtype).removeprefix('torch.')}"] = (before, now)
    return compare(pairs, rounds)


def spatial_section(model, rounds: int) -> dict:
    adapter = model.blocks[BLOCK].adapter
    weights = (adapter.spectral, adapter.k3, adapter.k5, adapter.k7, adapter.conv_bias, adapter.noise_w1,
               adapter.noise_b1, adapter.noise_w2, adapter.noise_b2, adapter.proj, adapter.proj_bias)
    grid, channels = model.blocks[BLOCK].grid, adapter.w_norm.shape[0]
    before, now = torch.compile(TorchAdapterKernels.adapter_spatial), torch.compile(CpuAdapterKernels.adapter_spatial)
    pairs = {}
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (1, 4):
            z = torch.randn(batch, 1 + grid * grid, channels, generator=torch.Generator().manual_seed(batch)).to(dtype)
            pairs[f"batch {batch} {str(dtype).removeprefix('torch.')}"] = (
                lambda z=z: before(z, grid, grid, *weights), lambda z=z: now(z, grid, grid, *weights))
    return compare(pairs, rounds)


def profile(call, runs: int = 10) -> list:
    """The top self-CPU-time entries of `runs` calls, ms per call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            call()
    rows = sorted(prof.key_averages(), key=lambda event: -event.self_cpu_time_total)[:14]
    return [{"name": row.key[:80], "self_ms_per_call": row.self_cpu_time_total / 1e3 / runs,
             "calls_per_call": row.count / runs} for row in rows]


def block_section(package, rounds: int, with_profile: bool) -> dict:
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    results = {}
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        old = build_model(package, precision, TorchAdapterKernels())
        if precision == "fp32":
            onednn_linears(old)
        new = prepare(build_model(package, precision, CpuAdapterKernels()), precision)
        x = torch.randn(1, TOKENS, package.config.width, generator=torch.Generator().manual_seed(1)).to(dtype)
        before, now = torch.compile(old.blocks[BLOCK]), torch.compile(new.blocks[BLOCK])
        measured = compare({precision: (lambda: before(x), lambda: now(x))}, rounds)[precision]
        if with_profile:
            measured["profile"] = {"before": profile(lambda: before(x)), "now": profile(lambda: now(x))}
        results[precision] = measured
    return results


def render(report: dict) -> str:
    lines = [f"CPU block pieces, {report['machine']['cpu']['model']}, {report['settings']['threads']} threads"]
    for section in SECTIONS:
        for label, case in report.get(section, {}).items():
            ratio = case["now_over_before"]
            lines.append(f"{section:8s} {label:16s} before {case['before']['median_ms']:8.3f} ms  now "
                         f"{case['now']['median_ms']:8.3f} ms  now/before {ratio['median']:.2f} "
                         f"[{ratio['p10']:.2f}..{ratio['p90']:.2f}]")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds, no profile (numbers: none)")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated of {', '.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, default=None, help=f"where to write the results (default {RESULTS}, "
                        "none with --quick unless given)")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    rounds = 3 if args.quick else args.rounds
    if rounds < 1 or not set(sections) <= set(SECTIONS):
        parser.error(f"--rounds must be >= 1 and --sections names some of {', '.join(SECTIONS)}")
    out = results_path(args.json, RESULTS, args.quick)
    if out is not None and out.is_dir():
        parser.error(f"--json {out} is a directory; give a file path")
    apply_budget()
    report = {"benchmark": "cpu-block", "quick": args.quick, "machine": machine_info("cpu"),
              "settings": {"rounds": rounds, "threads": torch.get_num_threads(), "budget": budget(),
                           "tokens": TOKENS, "block": BLOCK, "timer": "perf_counter_ns"}}
    config = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2)
    with tempfile.TemporaryDirectory(prefix="ht-bench-block-") as scratch, inductor_cache_dir(), \
            torch.inference_mode():
        path = Path(scratch) / "seg.htpkg"
        save_package(path, config, random_package_tensors(config, 0))
        package = load_package(path)
        if "gemm" in sections:
            print("gemm ...", flush=True)
            report["gemm"] = gemm_section(rounds)
        if "spatial" in sections:
            print("spatial ...", flush=True)
            report["spatial"] = spatial_section(build_model(package, "fp32", TorchAdapterKernels()), rounds)
        if "block" in sections:
            print("block ...", flush=True)
            report["block"] = block_section(package, rounds, with_profile=not args.quick)
    return publish(report, render(report), out)


if __name__ == "__main__":
    sys.exit(main())
