"""GPU check: per-kernel and end-to-end benchmarks side by side with their baselines, plus the bf16 GEMM rate.

Run by `benchmarks/gpu_check.sh` (which also runs the GPU tests). Every section is guarded: a failure is recorded
in the JSON and the next section runs. The JSON is rewritten after each section, so a run cut short by the time
budget keeps what it measured. `--device cpu --tiny` runs the same code on CPU at toy sizes (no timing value,
only a check that the script works); on CPU the htkernels ops dispatch to their references.

Providers side by side:
- kernels: `eager_ref` (the `<op>_ref`), `compile_ref` (`torch.compile` of it), `torch_provider` (the optimized
  model's plain-torch ops), `triton` (`torch.ops.htkernels.*`) and `cuda` (the CUDA C++ provider, when built).
- end to end: `reference` (eager), `compile_reference` (`torch.compile` of it), `optimized` (the optimized backend:
  Triton kernels + CUDA graphs) and `optimized_torch_graphs` (same model with the plain-torch adapter ops).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAPH_PROVIDERS = ("eager_ref", "torch_provider", "triton", "cuda")  # kernels also timed inside a CUDA graph
# The eager reference's seg head upsamples 512 channels to 224² before its 1×1 conv: past this batch the output
# exceeds INT_MAX elements (a limit of the CUDA upsample kernel), so larger batches run in chunks of this size.
REFERENCE_CHUNK = 64


class Timer:
    """Medians of repeated calls: CUDA events on a GPU (device time incl. launch gaps), wall clock on CPU."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device = device
        self.warmup = warmup
        self.reps = reps

    def __call__(self, fn) -> dict:
        for _ in range(self.warmup):
            fn()
        samples = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            for _ in range(self.reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) * 1e3)
        else:
            for _ in range(self.reps):
                begin = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - begin) * 1e6)
        quartiles = np.percentile(samples, [25, 75])
        return {"median_us": statistics.median(samples), "p25_us": float(quartiles[0]), "p75_us": float(quartiles[1]),
                "reps": len(samples)}


def graph_time(timer: Timer, fn, repeat: int) -> dict:
    """Device time of `fn` inside a CUDA graph of `repeat` back-to-back calls, per call (no launch overhead)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            fn()
    result = timer(graph.replay)
    return {k: (v / repeat if k.endswith("_us") else v) for k, v in result.items()}


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git_sha": git_sha(),
            "python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def cuda_provider(device: torch.device):
    """The CUDA C++ provider of the cuda branch when it is present and built, else None (with why)."""
    try:
        from engine.optimize.kernels import get_kernels

        provider = get_kernels("cuda")
        usable, reason = provider.available(str(device))
        return (provider(), "") if usable else (None, reason)
    except Exception as exc:  # noqa: BLE001  (any failure here only removes one column of the table)
        return None, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------------- kernels


def kernel_inputs(op: str, batch: int, dtype, device, width: int, channels: int, grid: int, spectral: bool = False):
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt)

    tokens = 1 + grid * grid
    rows = batch * tokens
    if op == "adapter_in":
        return (randn(rows, width), randn(channels, width, scale=0.05), randn(channels, width, scale=0.05),
                randn(channels), 1e-5)
    if op == "adapter_out":
        return randn(rows, channels), randn(width, channels, scale=0.1), randn(width), randn(rows, width)
    if op == "linear_act":  # the block's fc1 + GELU
        return randn(rows, width), randn(4 * width, width, scale=width ** -0.5), randn(4 * width), "gelu"
    if op == "adapter_spatial":
        f32 = torch.float32
        reduced = channels // 4
        filt = randn(channels, grid, grid // 2 + 1, 2, dt=f32) if spectral else None
        return (randn(batch, tokens, channels), grid, grid, filt, randn(channels, 3, 3, dt=f32),
                randn(channels, 5, 5, dt=f32), randn(channels, 7, 7, dt=f32), randn(3, channels, dt=f32),
                randn(reduced, channels, dt=f32), randn(reduced, dt=f32), randn(3, reduced, dt=f32), randn(3, dt=f32),
                randn(channels, channels, scale=0.1, dt=f32), randn(channels, dt=f32))
    raise ValueError(op)


def preprocess_inputs(batch: int, height: int, width: int, size: int, device):
    from engine.preprocess import pil_resize_matrix

    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (batch, height, width), dtype=torch.uint8, generator=gen).to(device)
    rows = torch.from_numpy(np.array(pil_resize_matrix(height, size))).to(device=device, dtype=torch.int32)
    cols = torch.from_numpy(np.array(pil_resize_matrix(width, size))).to(device=device, dtype=torch.int32)
    return frames, rows, cols, 1.0 / 255.0, torch.float32


def bench_kernels(args, device, timer, results, save, deadline):
    import htkernels.adapter_in as ain
    import htkernels.adapter_out as aout
    import htkernels.adapter_spatial as asp
    import htkernels.linear_act as act
    import htkernels.preprocess as pre
    from engine.optimize.kernels import TorchAdapterKernels

    refs = {"adapter_in": ain.adapter_in_ref, "adapter_out": aout.adapter_out_ref,
            "adapter_spatial": asp.adapter_spatial_ref, "linear_act": act.linear_act_ref,
            "preprocess": pre.preprocess_ref}
    cuda_impl, cuda_reason = cuda_provider(device)
    results["cuda_provider"] = "available" if cuda_impl is not None else f"unavailable: {cuda_reason}"
    width, channels, grid = (48, 16, 5) if args.tiny else (768, 64, 14)
    cases = []
    for batch in args.kernel_batches:
        for op in ("adapter_in", "adapter_spatial", "adapter_out"):
            cases.append((op, batch, False))
        cases.append(("adapter_spatial", batch, True))
        cases.append(("linear_act", batch, False))
    frame_shape = (37, 45, 24) if args.tiny else (480, 640, 224)
    cases.append(("preprocess", 8 if not args.tiny else 2, False))
    rows = results.setdefault("kernels", [])
    compiled_refs = {}  # one torch.compile per op: a second batch size recompiles once with a dynamic batch
    for op, batch, spectral in cases:
        label = op + ("[spectral]" if spectral else "")
        dtype = DTYPES[args.dtype]
        if op == "preprocess":
            inputs = preprocess_inputs(batch, *frame_shape, device)
            shape = f"B={batch} {frame_shape[0]}x{frame_shape[1]}->{frame_shape[2]}"
        else:
            inputs = kernel_inputs(op, batch, dtype, device, width, channels, grid, spectral)
            shape = f"B={batch} D={width} r={channels} grid={grid}"
        ref = refs[op]
        providers = {"eager_ref": lambda ref=ref, inputs=inputs: ref(*inputs),
                     "triton": lambda op=op, inputs=inputs: getattr(torch.ops.htkernels, op)(*inputs)}
        if op not in ("preprocess", "linear_act"):
            providers["torch_provider"] = lambda op=op, inputs=inputs: getattr(TorchAdapterKernels, op)(*inputs)
        if cuda_impl is not None and op != "linear_act" and hasattr(cuda_impl, op):
            providers["cuda"] = lambda op=op, inputs=inputs: getattr(cuda_impl, op)(*inputs)
        if not args.no_compile and time.monotonic() < deadline:
            compiled = compiled_refs.setdefault(op, torch.compile(ref))
            providers["compile_ref"] = lambda compiled=compiled, inputs=inputs: compiled(*inputs)
        row = {"op": label, "shape": shape, "dtype": str(dtype).replace("torch.", "") if op != "preprocess" else "u8"}
        expected = None
        with torch.inference_mode():
            for name, fn in providers.items():
                try:
                    out = fn()
                    if expected is None:
                        expected = ref(*[t.double() if torch.is_tensor(t) and t.is_floating_point() else t
                                         for t in inputs]) if op != "preprocess" else out
                    err = ((out.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
                    row[name] = timer(fn) | {"rel_err": err}
                except Exception as exc:  # noqa: BLE001
                    row[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    continue
                if device.type == "cuda" and name in GRAPH_PROVIDERS:
                    # Device time per call without the launch overhead (what a CUDA-graph forward pays).
                    try:
                        row[name]["graph_us"] = graph_time(timer, fn, repeat=20)["median_us"]
                    except Exception as exc:  # noqa: BLE001
                        row[name]["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        save()


def block_inputs(dtype, device, width: int, channels: int, grid: int) -> tuple:
    """Batch-1 inputs of one adapter: adapter_in's `(x, w_norm, w_raw, bias, eps)`, adapter_spatial's arguments
    (z first) and adapter_out's `(w2, b2)`."""
    spatial = kernel_inputs("adapter_spatial", 1, dtype, device, width, channels, grid)
    _, w2, b2, _ = kernel_inputs("adapter_out", 1, dtype, device, width, channels, grid)
    return kernel_inputs("adapter_in", 1, dtype, device, width, channels, grid), spatial, (w2, b2)


def adapter_block(inputs: tuple, adapter_in, adapter_spatial, adapter_out):
    """The adapter of `block_inputs` as one call: adapter_in → adapter_spatial → adapter_out (+ residual x)."""
    (x, w_norm, w_raw, bias, eps), spatial, (w2, b2) = inputs
    z_shape = spatial[0].shape

    def run():
        z = adapter_in(x, w_norm, w_raw, bias, eps)
        g = adapter_spatial(z.view(z_shape), *spatial[1:])
        return adapter_out(g.view(-1, z_shape[-1]), w2, b2, x)

    return run


def bench_adapter_block(device, timer, results, width, channels, grid, save):
    """The three adapter kernels of one block at batch 1 inside a CUDA graph: the ≤ 25 µs per block target.

    Providers: `triton` (all three Triton kernels), `cuda` (the CUDA C++ spatial kernel, cuBLAS GEMMs),
    `triton_gemms_cuda_spatial` (Triton in/out around the CUDA C++ spatial kernel) and `torch_provider`."""
    from engine.optimize.kernels import TorchAdapterKernels
    from htkernels.triton_provider import TritonAdapterKernels

    cuda_impl, _ = cuda_provider(device)
    triton_impl = TritonAdapterKernels()
    providers = {"triton": (triton_impl, triton_impl), "torch_provider": (TorchAdapterKernels, TorchAdapterKernels)}
    if cuda_impl is not None:
        providers["cuda"] = (cuda_impl, cuda_impl)
        providers["triton_gemms_cuda_spatial"] = (triton_impl, cuda_impl)
    block = results.setdefault("adapter_block_batch1", {})
    for dtype_name in ("bf16", "fp32"):
        inputs = block_inputs(DTYPES[dtype_name], device, width, channels, grid)
        for name, (gemms, spatial_kernels) in providers.items():
            adapter = adapter_block(inputs, gemms.adapter_in, spatial_kernels.adapter_spatial, gemms.adapter_out)
            for mode in ("eager", "graph"):
                key = f"{name}_{dtype_name}_{mode}"
                try:
                    with torch.inference_mode():
                        block[key] = timer(adapter) if mode == "eager" else graph_time(timer, adapter, repeat=20)
                except Exception as exc:  # noqa: BLE001
                    block[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            save()


def tuning_sweep(width: int, channels: int, grid: int) -> dict:
    """Launch configurations swept at batch 1: each launcher's tuner candidates (the first is its default)."""
    from htkernels import adapter_in, adapter_out, adapter_spatial

    rows = 1 + grid * grid
    return {"adapter_in": adapter_in.tuning_candidates(rows),
            "adapter_spatial": adapter_spatial.tuning_candidates(1, grid, grid, channels),
            "adapter_out": adapter_out.tuning_candidates(rows)}


def bench_tuning(device, timer, results, width, channels, grid, save, deadline):
    """Each Triton kernel of the batch-1 adapter under each of its tuner candidates, in CUDA graphs, then the block
    with the fastest configuration of each: the data the launchers' batch-1 defaults come from."""
    from htkernels.adapter_in import adapter_in_triton
    from htkernels.adapter_out import adapter_out_triton
    from htkernels.adapter_spatial import adapter_spatial_triton

    dtype = DTYPES["bf16"]
    inputs = block_inputs(dtype, device, width, channels, grid)
    (x, w_norm, w_raw, bias, eps), spatial, (w2, b2) = inputs
    g2d = torch.randn(x.shape[0], channels, device=device, dtype=dtype)
    calls = {
        "adapter_in": lambda tuning: adapter_in_triton(x, w_norm, w_raw, bias, eps, tuning=tuning),
        "adapter_spatial": lambda tuning: adapter_spatial_triton(*spatial, tuning=tuning),
        "adapter_out": lambda tuning: adapter_out_triton(g2d, w2, b2, x, tuning=tuning),
    }
    tuning = results.setdefault("tuning_batch1_bf16", {})
    sweep = tuning_sweep(width, channels, grid)
    best = {}
    with torch.inference_mode():
        for op, configs in sweep.items():
            rows = tuning.setdefault(op, [])
            for config in configs:
                if time.monotonic() > deadline:
                    rows.append({"config": config, "error": "skipped: time budget spent"})
                    continue
                try:
                    stats = graph_time(timer, lambda config=config: calls[op](config), repeat=20)
                    rows.append({"config": config, "graph_us": stats["median_us"]})
                    if op not in best or stats["median_us"] < best[op][1]:
                        best[op] = (config, stats["median_us"])
                except Exception as exc:  # noqa: BLE001
                    rows.append({"config": config, "error": f"{type(exc).__name__}: {exc}"[:300]})
            save()
        if len(best) == 3:
            launchers = {"adapter_in": adapter_in_triton, "adapter_spatial": adapter_spatial_triton,
                         "adapter_out": adapter_out_triton}
            block = adapter_block(inputs, *(functools.partial(launchers[op], tuning=best[op][0]) for op in sweep))
            tuning["best_block"] = {"configs": {op: config for op, (config, _) in best.items()},
                                    "graph_us": graph_time(timer, block, repeat=20)["median_us"]}
    save()


# ------------------------------------------------------------------------------------------------ end to end


def chunked(model, images: torch.Tensor) -> torch.Tensor:
    """`model(images)`, in chunks of REFERENCE_CHUNK images past that size (see REFERENCE_CHUNK)."""
    if images.shape[0] <= REFERENCE_CHUNK:
        return model(images)
    return torch.cat([model(part) for part in images.split(REFERENCE_CHUNK)])


def bench_end_to_end(args, device, timer, results, save, deadline):
    from engine.bench.flops import count_flops
    from engine.config import ModelConfig
    from engine.model import build_reference_model
    from engine.optimize.model import OptimizedHTModel
    from engine.runner import Runner
    from engine.weights import random_package_tensors

    if args.tiny:
        cfg = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, width=48, layers=4, heads=4, bottleneck=16,
                                   head_dim=24, image_size=80, extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3])
    else:
        cfg = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2)
    tensors = random_package_tensors(cfg, seed=0, calibrate=False)
    e2e = results.setdefault("end_to_end", {"arch": cfg.arch, "task": cfg.task, "rows": []})
    # The work the model needs (the exact rewrites applied), counted from the config as `ht-engine bench` does.
    e2e["gflop_per_image"] = count_flops(cfg, pruned=True).total / 1e9
    dtype = DTYPES[args.dtype]
    reference = build_reference_model(cfg, tensors).to(device)
    reference_lp = build_reference_model(cfg, tensors).to(device=device, dtype=dtype)
    # Default dynamic shapes: batch 1 compiles static, the next batch size once more with a dynamic batch.
    compiled = None if args.no_compile else torch.compile(reference_lp)
    runners = {}
    try:
        if device.type == "cuda":
            from engine.backends import optimized

            class Package:  # what `optimized.load` reads from a loaded package
                config = cfg

            Package.tensors = tensors
            runners["optimized"] = optimized.load(Package, str(device), args.dtype)
            from engine.optimize.cuda_runner import make_cuda_runner

            torch_model = OptimizedHTModel(cfg, tensors, kernels="torch", dtype=dtype).eval().to(device)
            runners["optimized_torch_graphs"] = make_cuda_runner(torch_model, str(device), args.dtype)
            if cuda_provider(device)[0] is not None:
                runners["optimized_cuda"] = optimized.load(Package, str(device), args.dtype, kernels="cuda")
        else:
            model = OptimizedHTModel(cfg, tensors, kernels="torch", dtype=dtype).eval()
            runners["optimized"] = Runner(run=model, uses_torch=True, device="cpu", precision=args.dtype)
    except Exception as exc:  # noqa: BLE001
        e2e["runner_error"] = f"{type(exc).__name__}: {exc}"[:500]
    for batch in args.batches:
        row = {"batch": batch, "dtype": args.dtype}
        images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device,
                            generator=torch.Generator(device=device).manual_seed(batch))
        if batch > REFERENCE_CHUNK:
            row["reference_chunk"] = REFERENCE_CHUNK
        with torch.inference_mode():
            truth = chunked(reference, images)
            candidates = {"reference": lambda: chunked(reference_lp, images.to(dtype))}
            if compiled is not None:
                if time.monotonic() < deadline:
                    candidates["compile_reference"] = lambda: chunked(compiled, images.to(dtype))
                else:
                    row["compile_reference"] = {"error": "skipped: time budget spent"}
            for name, runner in runners.items():
                candidates[name] = lambda runner=runner: runner.run(images)
            for name, fn in candidates.items():
                try:
                    out = fn()
                    err = ((out.double() - truth.double()).abs().max() / truth.double().abs().max()).item()
                    stats = timer(fn)
                    stats["images_per_s"] = batch / (stats["median_us"] * 1e-6)
                    stats["rel_err_vs_fp32_reference"] = err
                    if "gflop_per_image" in e2e:
                        stats["tflop_per_s"] = stats["images_per_s"] * e2e["gflop_per_image"] / 1e3
                    row[name] = stats
                except Exception as exc:  # noqa: BLE001
                    row[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        e2e["rows"].append(row)
        save()


def record_tuner(results: dict) -> None:
    """The launch tuner's choices so far (the optimized backend tunes in its warm-up runs), with every candidate's
    time."""
    from htkernels._tune import TUNER

    results["tuner_choices"] = TUNER.report()


def bench_gemm(args, device, timer, results, save):
    n = 256 if args.tiny else 8192
    dtype = torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    stats = timer(lambda: a @ b)
    stats["tflop_per_s"] = 2 * n**3 / (stats["median_us"] * 1e-6) / 1e12
    results["gemm_bf16"] = {"n": n} | stats
    save()


# ---------------------------------------------------------------------------------------------------- table


def _short(config: dict) -> str:
    if config.get("impl") == "torch":
        return "cublas"
    names = {"block_m": "m", "block_d": "d", "block_n": "n", "block_p": "p", "num_warps": "w", "single_pass": "1pass",
             "pool_block": "pool", "split_conv": "split", "num_stages": "s"}
    return "/".join(names.get(key, key) + ("" if value is True else str(value)) for key, value in config.items()
                    if value is not False and key != "impl")


def table(results: dict) -> str:
    lines = []
    env = results.get("environment", {})
    lines.append(f"card {env.get('card', env.get('device'))}  driver {env.get('driver')}  torch {env.get('torch')}  "
                 f"triton {env.get('triton')}  git {env.get('git_sha')}  {env.get('date')}")
    gemm = results.get("gemm_bf16", {})
    gemm_rate = gemm.get("tflop_per_s")
    if gemm_rate:
        lines.append(f"bf16 GEMM {gemm['n']}^3: {gemm_rate:.1f} TFLOP/s")
    lines.append("")
    names = ["eager_ref", "compile_ref", "torch_provider", "triton", "cuda"]
    lines.append("kernels: median us per call with launches (in a CUDA graph) and max rel. error to fp64")
    lines.append(f"{'kernel':<26}{'shape':<30}{'dtype':<10}" + "".join(f"{n:>22}" for n in names))
    for row in results.get("kernels", []):
        cells = []
        for name in names:
            cell = row.get(name)
            if cell is None:
                cells.append(f"{'-':>22}")
            elif "error" in cell:
                cells.append(f"{'error':>22}")
            else:
                graph = f"({cell['graph_us']:.1f})" if "graph_us" in cell else ""
                cells.append(f"{cell['median_us']:.1f}{graph} e{cell['rel_err']:.0e}".rjust(22))
        lines.append(f"{row['op']:<26}{row['shape']:<30}{row['dtype']:<10}" + "".join(cells))
    block = results.get("adapter_block_batch1", {})
    if block:
        lines.append("")
        lines.append("adapter, 3 kernels, batch 1, per block (target <= 25 us on H100):")
        for name, cell in block.items():
            value = f"{cell['median_us']:.1f} us" if "median_us" in cell else cell.get("error", "")
            lines.append(f"  {name:<32}{value}")
    tuning = results.get("tuning_batch1_bf16", {})
    if tuning:
        lines.append("")
        lines.append("launch configurations, batch 1 bf16, us per call in a CUDA graph (first = default):")
        for op, rows in tuning.items():
            if op == "best_block":
                continue
            cells = [f"{row['graph_us']:.1f}" if "graph_us" in row else "err" for row in rows]
            lines.append(f"  {op:<16}" + "  ".join(f"{_short(row['config'])}={cell}" for row, cell in zip(rows, cells)))
        if "best_block" in tuning:
            lines.append(f"  block with the best of each: {tuning['best_block']['graph_us']:.1f} us")
    choices = results.get("tuner_choices", [])
    if choices:
        lines.append("")
        lines.append("launch tuner's choices (default first; us per call in a CUDA graph):")
        for choice in choices:
            default = choice["measured"][0] if choice["measured"] else {}
            chosen = next((row for row in choice["measured"] if row["config"] == choice["config"]), {})
            lines.append(f"  {choice['op']:<16}{str(choice['key']):<44}{_short(choice['config'])} "
                         f"{chosen.get('us', float('nan')):.1f} (default {default.get('us', float('nan')):.1f})")
    e2e = results.get("end_to_end", {})
    if e2e.get("rows"):
        lines.append("")
        gflop = e2e.get("gflop_per_image")
        lines.append(f"end to end {e2e.get('arch')} {e2e.get('task')}"
                     + (f", {gflop:.3g} GFLOP/image" if gflop else "") + "  (median ms | img/s | speed-up vs eager | "
                     "vs compile | % of GEMM rate | rel err vs fp32 reference)")
        for row in e2e["rows"]:
            base = row.get("compile_reference", {}).get("median_us")
            eager = row.get("reference", {}).get("median_us")
            if row.get("reference_chunk"):
                lines.append(f"  B={row['batch']}: both references run in chunks of {row['reference_chunk']} images "
                             "(their upsample output would exceed INT_MAX elements)")
            for name in ("reference", "compile_reference", "optimized", "optimized_cuda", "optimized_torch_graphs"):
                cell = row.get(name)
                if cell is None:
                    continue
                if "error" in cell:
                    lines.append(f"  B={row['batch']:<4}{row['dtype']:<6}{name:<24}{cell['error'][:80]}")
                    continue
                speedup = f"{base / cell['median_us']:.2f}x" if base else "-"
                over_eager = f"{eager / cell['median_us']:.2f}x" if eager else "-"
                share = (f"{100 * cell['tflop_per_s'] / gemm_rate:.0f}%"
                         if gemm_rate and "tflop_per_s" in cell else "-")
                lines.append(f"  B={row['batch']:<4}{row['dtype']:<6}{name:<24}{cell['median_us'] / 1e3:>9.3f} ms"
                             f"{cell['images_per_s']:>10.0f}/s{over_eager:>8}{speedup:>8}{share:>6}  "
                             f"{cell['rel_err_vs_fp32_reference']:.1e}")
    for key in ("errors",):
        for section, message in results.get(key, {}).items():
            lines.append(f"section {section} failed: {message.splitlines()[-1] if message else ''}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the script, measures nothing useful")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--kernel-batches", default="1,64")
    parser.add_argument("--sections", default="gemm,block,tune,e2e,kernels")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="seconds this script may take: no new torch.compile past 60%% (end to end) and 85%% "
                             "(kernels) of it")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json or benchmarks/results)")
    parser.add_argument("--table", default=None, help="only print the table of an existing JSON")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.kernel_batches = [int(b) for b in args.kernel_batches.split(",") if b]
    started = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; use --device cpu --tiny to check the script", file=sys.stderr)
        return 2
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out_path = Path(args.out) if args.out else out_dir / "gpu_check.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(device), "args": {k: v for k, v in vars(args).items()}, "errors": {}}

    def save():
        out_path.write_text(json.dumps(results, indent=1, default=str))

    timer = Timer(device, args.warmup, args.reps)
    block_shape = (48, 16, 5) if args.tiny else (768, 64, 14)  # width, r, grid
    sections = {"gemm": lambda: bench_gemm(args, device, timer, results, save),
                "block": lambda: bench_adapter_block(device, timer, results, *block_shape, save),
                "tune": lambda: bench_tuning(device, timer, results, *block_shape, save, time.monotonic() + 60),
                "kernels": lambda: bench_kernels(args, device, timer, results, save, started + 0.85 * args.budget_s),
                "e2e": lambda: bench_end_to_end(args, device, timer, results, save, started + 0.75 * args.budget_s)}
    for name in args.sections.split(","):
        begin = time.monotonic()
        try:
            sections[name]()
        except Exception:  # noqa: BLE001  (one broken section must not lose the others)
            results["errors"][name] = traceback.format_exc()
            print(f"gpu_check: section {name} failed:\n{results['errors'][name]}", file=sys.stderr)
        results.setdefault("section_seconds", {})[name] = time.monotonic() - begin
        record_tuner(results)
        save()
    print(table(results))
    print(f"\nJSON: {out_path}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
