"""Section `e2e`: the end-to-end forward at each batch size next to the eager reference and `torch.compile` of it.

Providers: `reference` (eager, in the run's dtype), `compile_reference` (`torch.compile` of it), `optimized` (the
optimized backend: Triton kernels + CUDA graphs), `optimized_pdl` (the same with programmatic dependent launch
between the Triton kernels, `HTK_PDL`), `optimized_branches` (the same with the head's levels on side streams,
parallel branches of the graph, `HT_ENGINE_HEAD_BRANCHES`), `optimized_cuda` (the same with the CUDA C++ provider,
when built)
and `optimized_torch_graphs` (the optimized model with the plain-torch adapter ops, in CUDA graphs). Each row has its
error to the fp32 eager reference and its share of the GEMM rate (tflop_per_s against section `gemm`).
"""

from __future__ import annotations

import time

import torch

from engine.backends import optimized
from engine.bench.flops import count_flops
from engine.bench.measure import relative_error
from engine.config import ModelConfig
from engine.model import build_reference_model
from engine.optimize.branches import head_branches
from engine.optimize.cuda_runner import make_cuda_runner
from engine.optimize.model import OptimizedHTModel
from engine.runner import Runner
from engine.weights import random_package_tensors
from htkernels._triton import programmatic_launch

from .common import DTYPES, Check, cuda_provider, error_text

# The eager reference's seg head upsamples 512 channels to 224² before its 1×1 conv: past this batch the output
# exceeds INT_MAX elements (a limit of the CUDA upsample kernel), so larger batches run in chunks of this size.
REFERENCE_CHUNK = 64


def chunked(model, images: torch.Tensor) -> torch.Tensor:
    """`model(images)`, in chunks of REFERENCE_CHUNK images past that size (see REFERENCE_CHUNK)."""
    if images.shape[0] <= REFERENCE_CHUNK:
        return model(images)
    return torch.cat([model(part) for part in images.split(REFERENCE_CHUNK)])


def model_config(tiny: bool) -> ModelConfig:
    if tiny:
        return ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, width=48, layers=4, heads=4, bottleneck=16,
                                    head_dim=24, image_size=80, extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3])
    return ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2)


def add_runners(found: dict, cfg, tensors, device: torch.device, precision: str) -> None:
    """The optimized runners of this device into `found`, by provider name, one after the other (those made before
    a failure are kept)."""
    dtype = DTYPES[precision]
    if device.type != "cuda":
        model = OptimizedHTModel(cfg, tensors, dtype=dtype).eval()
        found["optimized"] = Runner(run=model, uses_torch=True, device="cpu", precision=precision)
        return

    class Package:  # what `optimized.load` reads from a loaded package
        config = cfg

    Package.tensors = tensors
    found["optimized"] = optimized.load(Package, str(device), precision)
    torch_model = OptimizedHTModel(cfg, tensors, dtype=dtype).eval().to(device)
    found["optimized_torch_graphs"] = make_cuda_runner(torch_model, str(device), precision)
    pdl = optimized.load(Package, str(device), precision)
    found["optimized_pdl"] = Runner(run=lambda images, run=pdl.run: with_pdl(run, images), uses_torch=True,
                                    device=str(device), precision=precision)
    forked = optimized.load(Package, str(device), precision)
    found["optimized_branches"] = Runner(run=lambda images, run=forked.run: with_branches(run, images),
                                         uses_torch=True, device=str(device), precision=precision)
    if cuda_provider(device)[0] is not None:
        found["optimized_cuda"] = optimized.load(Package, str(device), precision, kernels="cuda")


def with_pdl(run, images):
    """`run(images)` with the Triton kernels launched with programmatic dependent launch: its CUDA graphs, captured
    at the first call of each shape, keep PDL in every replay."""
    with programmatic_launch(True):
        return run(images)


def with_branches(run, images):
    """`run(images)` with the head's levels on side streams: its CUDA graphs, captured at the first call of each
    shape, keep the branches in every replay."""
    with head_branches(True):
        return run(images)


def run(check: Check) -> None:
    args, device, timer = check.args, check.device, check.timer
    deadline = check.deadline(0.75)
    cfg = model_config(args.tiny)
    tensors = random_package_tensors(cfg, seed=0, calibrate=False)
    e2e = check.results.setdefault("end_to_end", {"arch": cfg.arch, "task": cfg.task, "rows": []})
    # The work the model needs (the exact rewrites applied), counted from the config as `ht-engine bench` does.
    e2e["gflop_per_image"] = count_flops(cfg, pruned=True).total / 1e9
    dtype = DTYPES[args.dtype]
    reference = build_reference_model(cfg, tensors).to(device)
    reference_lp = build_reference_model(cfg, tensors).to(device=device, dtype=dtype)
    # Default dynamic shapes: batch 1 compiles static, the next batch size once more with a dynamic batch.
    compiled = None if args.no_compile else torch.compile(reference_lp)
    optimized_runners = {}
    try:
        add_runners(optimized_runners, cfg, tensors, device, args.dtype)
    except Exception as exc:  # noqa: BLE001  (the baselines and the runners made so far are still measured)
        e2e["runner_error"] = error_text(exc, limit=500)
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
            for name, runner in optimized_runners.items():
                candidates[name] = lambda runner=runner: runner.run(images)
            for name, fn in candidates.items():
                try:
                    error = relative_error(fn(), truth)
                    stats = timer(fn)
                    stats["images_per_s"] = batch / (stats["median_us"] * 1e-6)
                    stats["rel_err_vs_fp32_reference"] = error
                    if "gflop_per_image" in e2e:
                        stats["tflop_per_s"] = stats["images_per_s"] * e2e["gflop_per_image"] / 1e3
                    row[name] = stats
                except Exception as exc:  # noqa: BLE001
                    row[name] = {"error": error_text(exc)}
        e2e["rows"].append(row)
        check.save()
