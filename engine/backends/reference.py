"""`reference`: the faithful eager model in fp32, the ground truth every other backend is compared with."""

from __future__ import annotations

import torch

from ..devices import cuda_status, torch_device
from ..errors import BackendError, PackageError
from ..model import build_reference_model
from ..runner import Runner

PRECISIONS = ("fp32",)


def available(device: str) -> tuple[bool, str]:
    return cuda_status(device)


def load_model(config, tensors):
    try:
        return build_reference_model(config, tensors)
    except RuntimeError as exc:
        raise PackageError(f"package tensors do not fit the model of its config: {exc}") from exc


def load(package, device: str, precision: str) -> Runner:
    if precision not in PRECISIONS:
        raise BackendError(f"backend 'reference' runs in {PRECISIONS} only, got precision {precision!r}; "
                           f"use backend='optimized' for lower precisions")
    target = torch_device(device)
    model = load_model(package.config, package.tensors).to(target)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(target))

    return Runner(run=run, uses_torch=True, device=str(target), precision=precision)
