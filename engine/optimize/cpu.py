"""The CPU runner of the optimized backend: precision conversion, then eager execution."""

from __future__ import annotations

import torch

from ..backends.base import Runner


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every `nn.Linear` (the backbone and head GEMMs): weights int8 per output
    channel, activations quantized per tensor at run time, int32 accumulation (fbgemm/oneDNN VNNI kernels)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def make_cpu_runner(model: torch.nn.Module, package, precision: str) -> Runner:
    if precision == "int8":
        model = quantize_int8(model)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.cpu()).float()

    return Runner(run=run, uses_torch=True, device="cpu", precision=precision)
