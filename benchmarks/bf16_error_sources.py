"""Where bf16's mask error comes from: the eager reference model with bf16 rounding at one kind of op at a time.

    .venv/bin/python benchmarks/bf16_error_sources.py            # the bench's generated ViT-B/16 seg model
    .venv/bin/python benchmarks/bf16_error_sources.py --quick    # a reduced model, 2 frames: checks it runs

A group of ops "in bf16" here means: its weights rounded to bf16, its inputs rounded to bf16 and its outputs rounded to
bf16, with fp32 arithmetic in between (what an AMX/AVX-512 BF16 GEMM with fp32 accumulation stores). Each row rounds
one group (or every group but the named ones) and reports the argmax mask agreement with the fp32 model on the
bench's own batch-1 frame and on 12 more synthetic frames. Rounding every group reproduces OpenVINO's bf16 hint on the
exported graph within a few pixels, so the rows say where its error enters, and therefore which few ops an int8 or
bf16 artifact should keep in f32 (`engine.export.openvino`). Nothing is timed. Writes
`benchmarks/results/bf16-error-sources.json`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.bench.machine import machine_info  # noqa: E402
from engine.bench.report import publish, results_path  # noqa: E402
from engine.config import AUTHORS_PREPROCESSING, ModelConfig  # noqa: E402
from engine.export.quantize import calibration_batches  # noqa: E402
from engine.model import vit  # noqa: E402
from engine.model.reference import build_reference_model  # noqa: E402
from engine.package import load_package, save_package  # noqa: E402
from engine.preprocess import preprocess_frames  # noqa: E402
from engine.synthetic import synthetic_frame  # noqa: E402
from engine.weights import random_package_tensors  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "bf16-error-sources.json"
# Group name → what it rounds (`_round_group`).
GROUPS = {
    "backbone_gemms": "qkv, attention projection, fc1, fc2 of every block",
    "attention": "scaled-dot-product attention's q, k, v and output",
    "block_layernorms": "the blocks' two LayerNorm outputs",
    "residual": "the residual stream after each block",
    "adapter_input": "each adapter's input",
    "adapter_layernorm": "each adapter's LayerNorm output",
    "adapter_projections": "each adapter's W1 and W2",
    "adapter_convolutions": "each adapter's depthwise convolutions and 1x1 projector",
    "noise_estimator": "each adapter's two noise-estimator convolutions",
    "embedding": "the patch embedding",
    "head": "the head's linears and output convolution",
}


def _bf16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.bfloat16).float()


def _round_inputs(module, args):
    return tuple(_bf16(arg) if torch.is_tensor(arg) else arg for arg in args)


def _round_output(module, args, output):
    return _bf16(output)


def _in_bf16(module: nn.Module) -> None:
    """Weights, inputs and output of `module` rounded to bf16."""
    with torch.no_grad():
        module.weight.copy_(_bf16(module.weight))
    module.register_forward_pre_hook(_round_inputs)
    module.register_forward_hook(_round_output)


def _round_group(model, group: str) -> None:
    backbone, head = model.backbone, model.head
    for block in backbone.blocks:
        adapter = block.adapter
        if group == "backbone_gemms":
            for module in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                _in_bf16(module)
        elif group == "block_layernorms":
            block.norm1.register_forward_hook(_round_output)
            block.norm2.register_forward_hook(_round_output)
        elif group == "residual":
            block.register_forward_hook(_round_output)
        elif adapter is None:
            continue
        elif group == "adapter_input":
            adapter.register_forward_pre_hook(_round_inputs)
        elif group == "adapter_layernorm":
            adapter.norm.register_forward_hook(_round_output)
        elif group == "adapter_projections":
            _in_bf16(adapter.project1)
            _in_bf16(adapter.project2)
        elif group == "adapter_convolutions":
            spatial = adapter.spatial
            for module in (spatial.dw3, spatial.dw5, spatial.dw7, spatial.projector):
                _in_bf16(module)
        elif group == "noise_estimator":
            _in_bf16(adapter.spatial.noise1)
            _in_bf16(adapter.spatial.noise2)
    if group == "embedding":
        _in_bf16(backbone.patch_embed)
    elif group == "head":
        linears = list(head.reduces) + [m for level in head.levels for m in level if isinstance(m, nn.Linear)]
        for module in linears + [head.out]:
            _in_bf16(module)


def _sdpa_in_bf16(q, k, v, *args, **kwargs):
    return _bf16(F.scaled_dot_product_attention(_bf16(q), _bf16(k), _bf16(v), *args, **kwargs))


class _Attention:
    """While active, the backbone's attention runs `_sdpa_in_bf16` (the module calls it through `vit.F`)."""

    def __init__(self, active: bool):
        self.active = active

    def __enter__(self):
        if self.active:
            vit.F = _AttentionInBf16()

    def __exit__(self, *exc):
        vit.F = F


class _AttentionInBf16:
    def __getattr__(self, name):
        return _sdpa_in_bf16 if name == "scaled_dot_product_attention" else getattr(F, name)


def run_model(model, images: torch.Tensor, groups: set) -> torch.Tensor:
    variant = copy.deepcopy(model)
    for group in groups - {"attention"}:
        _round_group(variant, group)
    with torch.no_grad(), _Attention("attention" in groups):
        return torch.cat([variant(images[i:i + 1]) for i in range(len(images))])


def agreement(output: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    return (output.argmax(1) == reference.argmax(1)).float().mean((1, 2)).numpy()


def frames(config, count: int) -> torch.Tensor:
    """The bench's batch-1 frame (`ht-engine bench`'s seed 0), then `count` calibration-style frames (seed 100)."""
    first = preprocess_frames([synthetic_frame(360, 480, seed=0)[0]], config.preprocessing)
    return torch.from_numpy(np.concatenate([first] + calibration_batches(config.preprocessing, count, seed=100)))


def variants(quick: bool) -> list:
    """`(name, groups)` rows: every group, each group alone, every group but the adapters' projections (and more)."""
    every = set(GROUPS)
    rows = [("every group", every)] + [(f"only {group}", {group}) for group in GROUPS]
    rows += [("every group but adapter_projections", every - {"adapter_projections"}),
             ("every group but the adapters", every - {g for g in GROUPS if g.startswith(("adapter", "noise"))}),
             ("every group but the adapters and head",
              every - {g for g in GROUPS if g.startswith(("adapter", "noise", "head"))})]
    return rows[:3] if quick else rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, help="a seg package instead of the bench's generated model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated model (default 0, the bench's)")
    parser.add_argument("--frames", type=int, default=12, help="synthetic frames beside the bench's (default 12)")
    parser.add_argument("--quick", action="store_true", help="a reduced model, 2 frames, 3 rows: checks it runs")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"where the results go (default {DEFAULT_JSON.relative_to(ROOT)}; none with --quick "
                             "unless given)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ht-bf16-sources-") as scratch:
        if args.package is None:
            overrides = dict(width=48, layers=4, heads=4, bottleneck=16, head_dim=24, image_size=96,
                             extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3],
                             preprocessing=dict(AUTHORS_PREPROCESSING, size=96)) if args.quick else {}
            config = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, **overrides)
            path = Path(scratch) / "generated.htpkg"
            save_package(path, config, random_package_tensors(config, args.seed, calibrate=True))
        else:
            path = args.package
        package = load_package(path)
    config = package.config
    if config.task != "seg":
        parser.error(f"{path} is a {config.task} package; mask agreement needs a seg one")
    model = build_reference_model(config, package.tensors)
    images = frames(config, 1 if args.quick else args.frames)
    with torch.no_grad():
        reference = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
    rows = []
    for name, groups in variants(args.quick):
        agree = agreement(run_model(model, images, groups), reference)
        rows.append({"variant": name, "groups": sorted(groups), "bench_frame": float(agree[0]),
                     "mean": float(agree.mean()), "min": float(agree.min())})
        print(f"  {name:45s} bench frame {agree[0]:.4f}  mean {agree.mean():.4f}  min {agree.min():.4f}", flush=True)
    report = {"benchmark": "bf16-error-sources", "quick": args.quick, "machine": machine_info("cpu"),
              "package": "generated (seed %d)" % args.seed if args.package is None else str(args.package),
              "frames": len(images), "groups": GROUPS, "rows": rows}
    lines = ["| variant | masks, bench frame | masks, mean | masks, min |", "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['bench_frame']:.4f} | {r['mean']:.4f} | {r['min']:.4f} |" for r in rows]
    return publish(report, "\n".join(lines), results_path(args.json, DEFAULT_JSON, args.quick))


if __name__ == "__main__":
    sys.exit(main())
