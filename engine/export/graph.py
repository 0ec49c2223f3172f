"""The graph every artifact is made from."""

from __future__ import annotations

import torch

from ..errors import BackendError, PackageError


def deployable_model(config, tensors: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model to export, in eval mode on CPU."""
    from ..model import build_reference_model

    if dtype != torch.float32:
        raise BackendError(f"the exported graph is built in float32 only, got {dtype}")
    try:
        return build_reference_model(config, tensors)
    except RuntimeError as exc:
        raise PackageError(f"package tensors do not fit the model of its config: {exc}") from exc
