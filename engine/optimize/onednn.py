"""fp32 GEMMs for CPU through oneDNN instead of the BLAS that `F.linear` calls.

torch's CPU build sends fp32 `F.linear` to MKL's sgemm, which on some CPUs (measured on an AMD EPYC with AVX-512)
runs the transformer block's shapes at 106–144 GFLOP/s where oneDNN's matmul runs them at 184–196 (the same
numbers up to summation order). `onednn_linear` is that oneDNN matmul as a custom op, so `torch.compile` calls it
as one opaque kernel between the ops it fuses; the weights stay plain dense tensors (oneDNN's reorder of a dense
fp32 weight measured within 10% of a prepacked one, and a prepacked one is a tensor inductor cannot take as a
graph input).
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import replace_linears


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.library.custom_op("ht_engine::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`x [M,K] · weight[N,K]ᵀ + bias[N]` in fp32 by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


class OneDNNLinear(nn.Module):
    """Drop-in for an fp32 `nn.Linear` with a bias at inference: the same `x·Wᵀ + b` through `onednn_linear`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().float().contiguous())
        self.register_buffer("bias", linear.bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = onednn_linear(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias)
        return y.reshape(*shape[:-1], self.out_features)


def onednn_linears(model: nn.Module) -> nn.Module:
    """Replace every fp32 `nn.Linear` with a bias in `model` (in place) with a `OneDNNLinear`; returns the model.
    Without oneDNN in this torch build the model is left as it is."""
    if not onednn_available():
        return model
    return replace_linears(model, lambda linear: OneDNNLinear(linear)
                           if linear.bias is not None and linear.weight.dtype == torch.float32 else None)
