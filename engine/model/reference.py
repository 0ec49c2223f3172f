"""The faithful eager HT model: backbone with an adapter after every configured block, and the head."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .adapter import HTAdapter
from .heads import MultiLevelHead
from .vit import VisionTransformer


class HTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        adapters = {
            i: HTAdapter(cfg.width, cfg.bottleneck, cfg.filter_kind, cfg.grid, cfg.adapter_ln_eps)
            for i in cfg.adapter_layers
        }
        self.backbone = VisionTransformer(cfg, adapters)
        self.head = MultiLevelHead(cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`[B,3,S,S]` preprocessed images → seg logits `[B,C,S,S]` or cls logits `[B,C]`."""
        return self.head(self.backbone(images, self.cfg.extract_layers))


def build_reference_model(cfg: ModelConfig, tensors: dict | None = None) -> HTModel:
    """The reference model in eval mode, loaded strictly from package tensors when given."""
    model = HTModel(cfg)
    if tensors is not None:
        model.load_state_dict(tensors, strict=True)
    return model.eval()
