"""int8 GEMMs for CPU: dynamic quantization written in standard torch ops, so `torch.compile` fuses the
activation quantization into the neighbouring ops and `torch.export` sees plain tensors.

Scheme (dynamic quantization): weights int8 symmetric per output channel (scale = max|w_row|/127, quantized once
at load); activations int8 **asymmetric** per token (per GEMM row: `x ≈ s·(q + 128) + m` with `m = min x_row`,
`s = (max - min)/255`, computed at run time), which gives skewed inputs such as GELU outputs the full 256 levels;
`torch._int_mm` multiplies with int32 accumulation (VNNI on CPUs that have it) and the offset is corrected exactly
with the weight's integer row sums: `x·Wᵀ ≈ s_w ⊙ (s·(q·W_qᵀ + 128·ΣW_q) + m·ΣW_q)`. Everything outside these
GEMMs (LayerNorm, attention softmax, adapters, the folded head output) stays fp32.
"""

from __future__ import annotations

import torch
from torch import nn

_QMAX = 127.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: `(q int8 [M,K], scale fp32 [M,1])` with `x ≈ q·scale`."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / _QMAX
    return torch.round(x / scale).clamp(-_QMAX, _QMAX).to(torch.int8), scale


def quantize_rows_affine(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int8 per row: `(q int8 [M,K], scale [M,1], low [M,1])` with `x ≈ scale·(q + 128) + low`."""
    low = x.amin(dim=-1, keepdim=True)
    scale = (x.amax(dim=-1, keepdim=True) - low).clamp_min(1e-12) / 255.0
    q = torch.round((x - low) / scale).clamp(0, 255) - 128.0
    return q.to(torch.int8), scale, low


class Int8DynamicLinear(nn.Module):
    """Drop-in for an fp32 `nn.Linear` at inference: `y ≈ x·Wᵀ + b` with int8 operands (module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        q, scale = quantize_rows(weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # [K, N] layout: `_int_mm(x_q [M,K], w [K,N])`; the transpose view of a row-major [N,K] is what the
        # CPU kernel reads fastest (measured equal or better than a contiguous [K,N]).
        self.register_buffer("weight_t", q.t())
        self.register_buffer("weight_scale", scale.reshape(1, -1))
        self.register_buffer("weight_rowsum", q.float().sum(dim=1).reshape(1, -1))
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, scale, low = quantize_rows_affine(x.reshape(-1, self.in_features).float())
        acc = torch._int_mm(q, self.weight_t).float()
        y = (scale * (acc + 128.0 * self.weight_rowsum) + low * self.weight_rowsum) * self.weight_scale + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def replace_linears(model: nn.Module, replace) -> nn.Module:
    """Walk `model` (in place) and put `replace(linear)` in place of every `nn.Linear` for which it returns a
    module (None keeps the layer); returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            new = replace(child)
            if new is not None:
                setattr(model, name, new)
        else:
            replace_linears(child, replace)
    return model


def quantize_linears(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of `model` (in place) with an `Int8DynamicLinear`; returns the model."""
    return replace_linears(model, Int8DynamicLinear)
