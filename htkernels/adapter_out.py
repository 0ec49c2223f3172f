"""`adapter_out`: the r→D GEMM with bias and the residual add as its epilogue (see htkernels/README.md)."""

from __future__ import annotations

import torch


def adapter_out_ref(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`y = residual + g @ w2ᵀ + b2`; g `[M,r]`, w2 `[D,r]`, b2 `[D]`, residual `[M,D]`."""
    y = residual.float() + g.float() @ w2.float().t() + b2.float()
    return y.to(residual.dtype)
