"""Small packages for artifact tests (image size matched by the package's preprocessing)."""

from __future__ import annotations

from engine.config import AUTHORS_PREPROCESSING
from engine.model import build_reference_model
from engine.package import save_package
from tests.helpers import small_config, small_tensors


def small_package(path, arch: str, task: str, filter_kind: str = "channel", size: int = 96, seed: int = 3):
    """Write a small seeded package to `path`; returns the reference model of the same tensors."""
    cfg = small_config(arch, task, filter_kind, image_size=size, preprocessing=dict(AUTHORS_PREPROCESSING, size=size))
    tensors = small_tensors(cfg, seed=seed)
    save_package(path, cfg, tensors)
    return build_reference_model(cfg, tensors)
