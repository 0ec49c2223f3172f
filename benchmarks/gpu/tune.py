"""Section `tune`: each Triton kernel of the batch-1 adapter under each of its tuner candidates, in CUDA graphs, then
the block with the fastest configuration of each: the data the launchers' batch-1 defaults come from. Then the
block's qkv and fc1 with their LayerNorm (`norm_linear`: LayerNorm + `linear_act`, its default, against the
LayerNorm folded into the GEMM), and the block's attention under each back end the tuner chooses from (SDPA's own
choice, flash, memory-efficient, cuDNN, math, FA3 where installed) and the patch embedding (unfused ops against
the one-GEMM kernel), adapter_spatial + adapter_out against adapter_out fused into the spatial kernel, and the whole
adapter with and without adapter_in's partial sums of the image mean (`adapter`, pooled), fc2 + residual + the
adapter as two ops against fc2's kernel running adapter_in as its tail (`residual_adapter`; each fused candidate's
output, NaN-poisoned, also checked against the separate ops', `check`), and the seg head's tail
(`head_logits`: torch's four ops against one kernel). Also the launch tuner's
choices so far (`record`), which the optimized backend makes in its warm-up runs."""

from __future__ import annotations

import functools
import time

import torch

from htkernels import (
    adapter,
    adapter_in,
    adapter_out,
    adapter_spatial,
    attention,
    head_logits,
    norm_linear,
    patch_embed,
    residual_adapter,
)
from htkernels._tune import TUNER, output_mismatch
from htkernels.adapter_in import adapter_in_triton
from htkernels.adapter_out import adapter_out_triton
from htkernels.adapter_spatial import adapter_spatial_out_triton, adapter_spatial_triton
from htkernels.attention import attention_torch
from htkernels.norm_linear import norm_linear_triton
from htkernels.patch_embed import patch_embed_triton
from htkernels.testing import adapter_block, adapter_block_inputs, adapter_inputs

from .common import DTYPES, Check, error_text, graph_time
from .table import MATCHES

HEAD_WIDTH = 64  # ViT-B/16's: 12 heads at width 768
HEAD_LEVEL_WIDTH = 512  # the seg head's hidden width per level (three levels, two classes)
PATCH = 16
BUDGET_S = 60.0  # the sweep's own limit: candidates past it are recorded as skipped
# The ops whose candidates may coordinate their programs through memory (arrival counters: residual_adapter's fused
# kernel, adapter_out's split-K): the sweep checks each one's output, computed on NaN-filled buffers, against the
# default's, as the launch tuner does.
CHECKED = ("residual_adapter", "adapter_out_proj", "adapter_out_fc2")
LAUNCHERS = {"adapter_in": adapter_in_triton, "adapter_spatial": adapter_spatial_triton,
             "adapter_out": adapter_out_triton}


def tuning_sweep(width: int, channels: int, grid: int) -> dict:
    """Launch configurations swept at batch 1: each launcher's tuner candidates (the first is its default)."""
    rows = 1 + grid * grid
    return {"adapter_in": adapter_in.tuning_candidates(rows),
            "adapter_spatial": adapter_spatial.tuning_candidates(1, grid, grid, channels),
            "adapter_out": adapter_out.tuning_candidates(rows),
            "adapter_out_proj": adapter_out.tuning_candidates(rows, width),
            "adapter_out_fc2": adapter_out.tuning_candidates(rows, 4 * width),
            "norm_linear_qkv": norm_linear.tuning_candidates(rows),
            "norm_linear_fc1": norm_linear.tuning_candidates(rows),
            "attention": attention.tuning_candidates(DTYPES["bf16"]),
            "patch_embed": patch_embed.tuning_candidates(grid * grid),
            "adapter_spatial_out": adapter_spatial.spatial_out_candidates(1, grid, grid, channels),
            "adapter": adapter.candidates(),
            "residual_adapter": residual_adapter.candidates(rows),
            "head_logits": head_logits.tuning_candidates(grid * grid)}


def run(check: Check) -> None:
    device, timer = check.device, check.timer
    width, channels, grid = check.shape
    deadline = time.monotonic() + BUDGET_S
    dtype = DTYPES["bf16"]
    inputs = adapter_block_inputs(dtype, device, width, channels, grid)
    (x, w_norm, w_raw, bias, eps), spatial, (w2, b2) = inputs
    g2d = torch.randn(x.shape[0], channels, device=device, dtype=dtype)
    fc1 = adapter_inputs("norm_linear", 1, dtype, device, width, channels, grid)
    qkv = fc1[:3] + (fc1[3][:3 * width], fc1[4][:3 * width], fc1[5], "none")
    packed = torch.randn(1, x.shape[0], 3 * width, device=device, dtype=dtype)
    heads = max(1, width // HEAD_WIDTH)  # the --tiny model (width 48) as one head
    size = grid * PATCH
    embed_args = (torch.rand(1, 3, size, size, device=device), torch.randn(width, 3 * PATCH * PATCH, device=device,
                  dtype=dtype) * 0.02, torch.randn(width, device=device, dtype=dtype),
                  torch.randn(1, 1, width, device=device, dtype=dtype),
                  torch.randn(1, grid * grid, width, device=device, dtype=dtype), PATCH)
    levels = [torch.randn(1, x.shape[0], HEAD_LEVEL_WIDTH, device=device, dtype=dtype) for _ in range(3)]
    tail_weight = torch.randn(2, 3 * HEAD_LEVEL_WIDTH, device=device) * 0.02
    tail_bias = torch.zeros(2, device=device)
    fc2_args = (torch.randn(1, x.shape[0], 4 * width, device=device, dtype=dtype),
                torch.randn(width, 4 * width, device=device, dtype=dtype) * 0.02, torch.randn(width, device=device,
                                                                                             dtype=dtype))
    proj_args = (torch.randn(x.shape[0], width, device=device, dtype=dtype),
                 torch.randn(width, width, device=device, dtype=dtype) * 0.02,
                 torch.randn(width, device=device, dtype=dtype))
    calls = {
        "adapter_in": lambda tuning: adapter_in_triton(x, w_norm, w_raw, bias, eps, tuning=tuning),
        "adapter_spatial": lambda tuning: adapter_spatial_triton(*spatial, tuning=tuning),
        "adapter_out": lambda tuning: adapter_out_triton(g2d, w2, b2, x, tuning=tuning),
        # The block's attention projection and fc2 with their residual adds (split-K candidates among them).
        "adapter_out_proj": lambda tuning, poison=False: adapter_out_triton(
            proj_args[0], *proj_args[1:], x, tuning=tuning, poison=poison),
        "adapter_out_fc2": lambda tuning, poison=False: adapter_out_triton(
            fc2_args[0].view(-1, 4 * width), *fc2_args[1:], x, tuning=tuning, poison=poison),
        "norm_linear_qkv": lambda tuning: norm_linear_triton(*qkv, tuning=tuning),
        "norm_linear_fc1": lambda tuning: norm_linear_triton(*fc1, tuning=tuning),
        "attention": lambda tuning: attention_torch(packed, heads, tuning=tuning),
        "patch_embed": lambda tuning: patch_embed_triton(*embed_args, tuning=tuning),
        "adapter_spatial_out": lambda tuning: adapter_spatial_out_triton(
            *spatial, w2, b2, x.view(1, -1, width), tuning=tuning),
        "adapter": lambda tuning: adapter.adapter_triton(x.view(1, -1, width), grid, grid, w_norm, w_raw, bias, eps,
                                                         *spatial[3:], w2, b2, tuning=tuning),
        "residual_adapter": lambda tuning, poison=False: residual_adapter.residual_adapter_triton(
            *fc2_args, x.view(1, -1, width), grid, grid, w_norm, w_raw, bias, eps, *spatial[3:], w2, b2,
            tuning=tuning, poison=poison),
        "head_logits": lambda tuning: head_logits.head_logits_triton(levels, tail_weight, tail_bias, grid, grid,
                                                                     tuning=tuning),
    }
    tuning = check.results.setdefault("tuning_batch1_bf16", {})
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
                    if op in CHECKED and config != configs[0]:
                        wrong = output_mismatch(calls[op](config, poison=True), calls[op](configs[0]))
                        rows[-1]["check"] = wrong or MATCHES
                        if wrong:
                            continue  # never the best
                    if op not in best or stats["median_us"] < best[op][1]:
                        best[op] = (config, stats["median_us"])
                except Exception as exc:  # noqa: BLE001
                    rows.append({"config": config, "error": error_text(exc)})
            check.save()
        if all(op in best for op in LAUNCHERS):
            block = adapter_block(inputs, *(functools.partial(LAUNCHERS[op], tuning=best[op][0]) for op in LAUNCHERS))
            tuning["best_block"] = {"configs": {op: best[op][0] for op in LAUNCHERS},
                                    "graph_us": graph_time(timer, block, repeat=20)["median_us"]}
    check.save()


def record(results: dict) -> None:
    """The launch tuner's choices so far, with every candidate's time."""
    results["tuner_choices"] = TUNER.report()
