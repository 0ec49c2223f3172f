"""Our own CLIP ViT image tower, one module tree for the timm (BiomedCLIP) and OpenAI/open_clip families.

Differences between the families are data, not code paths: activation (erf GELU or QuickGELU), LayerNorm eps,
an `ln_pre` after the embeddings, and a bias on the patch convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}; expected 'gelu' or 'quick_gelu'")


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (`[3D, D]`, q/k/v stacked in that order)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_activation(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; the HT adapter (if any) is applied to the block's output."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, act: str, ln_eps: float, adapter: nn.Module | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, width * mlp_ratio, act)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        if self.adapter is not None:
            x = self.adapter(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg, adapters: dict):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.ln_eps) if cfg.ln_pre else None
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps, adapters.get(i))
            for i in range(cfg.layers)
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        return self.ln_pre(x) if self.ln_pre is not None else x

    def forward(self, images: torch.Tensor, extract_layers) -> list:
        """Token features `[B,N,D]` after each block in `extract_layers` (after that block's adapter)."""
        x = self.embed(images)
        wanted = set(extract_layers)
        features = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                features[index] = x
        return [features[i] for i in extract_layers]
