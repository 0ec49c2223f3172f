"""FLOPs of one forward pass counted from the config (multiply-add = 2 FLOPs), for rates in benchmarks."""

from __future__ import annotations

from .rewrites import live_blocks


def optimized_flops(cfg, batch: int = 1) -> dict:
    """FLOPs per forward of the optimized model (dead blocks pruned, head output folded, seg conv before the
    upsample), split into `gemm` (the dense matmuls that dominate) and `other` (attention scores, depthwise
    convs, the 14×14 DFT matmuls, upsampling)."""
    d, n, hw, r = cfg.width, cfg.num_tokens, cfg.grid * cfg.grid, cfg.bottleneck
    blocks = live_blocks(cfg.layers, cfg.extract_layers)
    adapters = sum(1 for i in cfg.adapter_layers if i < blocks)
    levels = len(cfg.extract_layers)
    gemm = 2 * hw * (3 * cfg.patch_size ** 2) * d
    gemm += blocks * 2 * n * d * (3 * d + d + 2 * cfg.mlp_ratio * d)
    gemm += adapters * 2 * n * (2 * d * r + r * d)
    gemm += levels * 2 * hw * (d * cfg.head_dim + cfg.head_dim ** 2)
    out = cfg.num_classes if cfg.task == "seg" else cfg.head_dim if cfg.cls_head == "mlp" else cfg.num_classes
    gemm += 2 * (hw if cfg.task == "seg" else 1) * levels * cfg.head_dim * out
    other = blocks * 2 * 2 * n * n * d
    spatial = 2 * hw * 49 * r + 2 * hw * r * r
    if cfg.filter_kind == "spectral":
        w2 = cfg.grid // 2 + 1
        spatial += 2 * r * (2 * cfg.grid * cfg.grid * w2 * 4)
    other += adapters * spatial
    if cfg.task == "seg":
        other += 2 * cfg.image_size ** 2 * cfg.num_classes * 4
    return {"gemm": gemm * batch, "other": other * batch, "total": (gemm + other) * batch}
