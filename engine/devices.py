"""Torch devices: parse a device name and say whether it can run here (shared by the torch backends and the
exporters that compile for a device)."""

from __future__ import annotations

import torch

from .errors import BackendError


def torch_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise BackendError(f"invalid device {device!r}: {exc}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} requested but this machine has no usable CUDA GPU")
    if parsed.type not in ("cpu", "cuda"):
        raise BackendError(f"device {device!r} is not supported; expected 'cpu' or 'cuda[:N]'")
    return parsed


def cuda_status(device: str) -> tuple[bool, str]:
    if device.startswith("cuda") and not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch"
    if not (device == "cpu" or device.startswith("cuda")):
        return False, f"unknown device {device!r}"
    return True, ""
