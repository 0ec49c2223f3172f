"""The CPU path's GEMMs through oneDNN's matmul, with the MLP's GELU in its epilogue.

torch's CPU build sends fp32 `F.linear` to MKL's sgemm, which on some CPUs (measured on an AMD EPYC with AVX-512)
runs the transformer block's shapes at 106–144 GFLOP/s where oneDNN's matmul runs them at 184–196 (the same
numbers up to summation order). bf16 `F.linear` reaches oneDNN already, but through `addmm`, whose GELU is a
separate pass over fc1's 197×3072 output. `onednn_linear` is oneDNN's matmul as a custom op, so `torch.compile`
calls it as one opaque kernel between the ops it fuses, with an optional erf-GELU post-op (oneDNN's `gelu_erf`).
Measured on a 2-core Xeon with AMX, 197 tokens, 2 threads (`benchmarks/bench_cpu_block.py`, section `gemm`;
`benchmarks/results/cpu-block.json`).
The weights stay plain dense tensors (oneDNN's reorder of a dense fp32 weight measured within 10% of a prepacked
one, and a prepacked one is a tensor inductor cannot take as a graph input).
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import replace_linears


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_bf16_supported() -> bool:
    """Whether oneDNN has bf16 matmul kernels on this CPU (AVX-512 or newer; it honours `ONEDNN_MAX_CPU_ISA`).
    Where it has none its bf16 inner product cannot be created at all, while `F.linear` still runs bf16 (slowly)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# The activations oneDNN applies in the GEMM's epilogue: our name → `_linear_pointwise`'s (attr, algorithm).
POST_OPS = {"none": ("none", ""), "gelu": ("gelu", "none")}


@torch.library.custom_op("ht_engine::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """`act(x [M,K] · weight[N,K]ᵀ + bias[N])` by oneDNN, in the dtype of its operands (fp32 or bf16);
    `activation` one of `POST_OPS` ("gelu": erf GELU)."""
    attr, algorithm = POST_OPS[activation]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


@onednn_linear.register_fake
def _(x, weight, bias, activation="none"):
    return x.new_empty((x.shape[0], weight.shape[0]))


class OneDNNLinear(nn.Module):
    """Drop-in for an fp32 or bf16 `nn.Linear` with a bias at inference: the same `x·Wᵀ + b` through
    `onednn_linear`; `forward(x, activation)` also applies one of `POST_OPS` in the GEMM's epilogue."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().contiguous())
        self.register_buffer("bias", linear.bias.detach().to(linear.weight.dtype).contiguous())

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        shape = x.shape
        y = onednn_linear(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias, activation)
        return y.reshape(*shape[:-1], self.out_features)


def onednn_linears(model: nn.Module) -> nn.Module:
    """Replace every fp32 `nn.Linear` with a bias in `model` (in place) with a `OneDNNLinear`, and every bf16 one
    where oneDNN has bf16 kernels on this CPU (`onednn_bf16_supported`); returns the model. Without oneDNN in this
    torch build the model is left as it is."""
    if not onednn_available():
        return model
    dtypes = (torch.float32, torch.bfloat16) if onednn_bf16_supported() else (torch.float32,)
    return replace_linears(model, lambda linear: OneDNNLinear(linear)
                           if linear.bias is not None and linear.weight.dtype in dtypes else None)
