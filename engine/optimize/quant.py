"""int8 GEMMs for CPU: dynamic quantization written in standard torch ops, so `torch.compile` fuses the
activation quantization into the neighbouring ops and `torch.export` sees plain tensors.

Scheme: weights int8 symmetric per output channel (scale = max|w_row|/127, quantized once at load); activations
int8 symmetric per token (per GEMM row, scale = max|x_row|/127, computed at run time); `torch._int_mm` multiplies
with int32 accumulation (VNNI on CPUs that have it); the result is rescaled by `scale_x ⊗ scale_w` and the fp32
bias added. Everything outside these GEMMs (LayerNorm, attention softmax, adapters, head) stays fp32.
"""

from __future__ import annotations

import torch
from torch import nn

_QMAX = 127.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: `(q int8 [M,K], scale fp32 [M,1])` with `x ≈ q·scale`."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / _QMAX
    return torch.round(x / scale).clamp(-_QMAX, _QMAX).to(torch.int8), scale


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
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, scale = quantize_rows(x.reshape(-1, self.in_features).float())
        acc = torch._int_mm(q, self.weight_t)
        y = acc.float() * (scale * self.weight_scale) + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_linears(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of `model` (in place) with an `Int8DynamicLinear`; returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8DynamicLinear(child))
        else:
            quantize_linears(child)
    return model
