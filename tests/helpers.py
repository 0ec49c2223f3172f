"""Shared test fixtures: small configs of every arch (fast on 2 cores) and seeded tensors."""

from __future__ import annotations

import torch

from engine.config import ARCHS, ModelConfig
from engine.weights import random_package_tensors

ALL_ARCHS = sorted(ARCHS)


def small_config(arch: str, task: str = "seg", filter_kind: str = "channel", num_classes: int = 3,
                 image_size: int = 112, **overrides) -> ModelConfig:
    """A ViT with the family's traits but tiny dims: 7x7 grid (odd), 4 layers, width 48, bottleneck 16."""
    fields = dict(width=48, layers=4, heads=4, bottleneck=16, head_dim=24, image_size=image_size, patch_size=16,
                  extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3], filter_kind=filter_kind)
    fields.update(overrides)
    return ModelConfig.for_arch(arch, task, num_classes, **fields)


def small_tensors(cfg: ModelConfig, seed: int = 0) -> dict:
    return random_package_tensors(cfg, seed=seed, calibrate=False)


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
