"""Section `gemm`: the bf16 GEMM rate of the card (8192³; 256³ with `--tiny`), what the end-to-end rows' share of
the peak is measured against."""

from __future__ import annotations

import torch

from .common import Check


def run(check: Check) -> None:
    n = 256 if check.args.tiny else 8192
    dtype = torch.bfloat16
    a = torch.randn(n, n, device=check.device, dtype=dtype)
    b = torch.randn(n, n, device=check.device, dtype=dtype)
    stats = check.timer(lambda: a @ b)
    stats["tflop_per_s"] = 2 * n**3 / (stats["median_us"] * 1e-6) / 1e12
    check.results["gemm_bf16"] = {"n": n} | stats
    check.save()
