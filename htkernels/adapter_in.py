"""`adapter_in`: LayerNorm-mix fused as the prologue of the D→r GEMM (see htkernels/README.md)."""

from __future__ import annotations

import torch


def adapter_in_ref(x: torch.Tensor, w_norm: torch.Tensor, w_raw: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """`z = ((x-mean)·rsqrt(var+eps)) @ w_normᵀ + x @ w_rawᵀ + bias`; x `[M,D]`, weights `[r,D]`, bias `[r]`."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    normed = (xf - mean) * torch.rsqrt(var + eps)
    z = normed @ w_norm.float().t() + xf @ w_raw.float().t() + bias.float()
    return z.to(x.dtype)
