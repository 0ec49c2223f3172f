"""The three-level head (design card §1): per level reduce D→512 and an MLP, summed, then seg or cls output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiLevelHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        levels = len(cfg.extract_layers)
        dim = cfg.head_dim
        self.task = cfg.task
        self.cls_head = cfg.cls_head
        self.grid = cfg.grid
        self.image_size = cfg.image_size
        self.reduces = nn.ModuleList(nn.Linear(cfg.width, dim) for _ in range(levels))
        self.levels = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            for _ in range(levels)
        )
        if cfg.task == "seg":
            self.out = nn.Conv2d(dim, cfg.num_classes, 1)
        elif cfg.cls_head == "mlp":
            self.hidden = nn.Linear(dim, dim)
            self.out = nn.Linear(dim, cfg.num_classes)
        else:
            self.out = nn.Linear(dim, cfg.num_classes)

    def fuse_levels(self, features: list) -> torch.Tensor:
        """Sum of the level MLPs on the spatial tokens, deepest level first (the authors' order), `[B,512,h,w]`."""
        total = None
        for feature, reduce, level in zip(features[::-1], self.reduces[::-1], self.levels[::-1]):
            a = level(reduce(feature[:, 1:, :]))
            total = a if total is None else a + total
        batch = total.shape[0]
        return total.permute(0, 2, 1).reshape(batch, -1, self.grid, self.grid)

    def forward(self, features: list) -> torch.Tensor:
        fused = self.fuse_levels(features)
        if self.task == "seg":
            size = (self.image_size, self.image_size)
            return self.out(F.interpolate(fused, size=size, mode="bilinear", align_corners=False))
        pooled = fused.mean(dim=(2, 3))
        if self.cls_head == "mlp":
            pooled = F.relu(self.hidden(pooled))
        return self.out(pooled)
