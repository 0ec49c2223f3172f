"""FLOPs per frame of an HT model, counted from its config.

One FLOP is one multiply or one add: a multiply-accumulate counts 2. Counted: every matmul and convolution
(patch embedding, qkv/proj, the attention products QKᵀ and AV, MLPs, adapter projections, depthwise convs, noise
estimator, projector, head linears), the frequency filter as dense DFT products, and the bilinear upsample
(4 taps per output pixel). Not counted: LayerNorm, softmax, GELU, residual adds and means, a fraction of a percent.

Two paths:
- `pruned=False`, the reference model as written: every block, the frequency filter through rfft2/irfft2 even for
  a per-channel filter, three depthwise convs, the seg head upsampling 512 channels and running its 1×1 conv at
  full resolution.
- `pruned=True`, the model after the exact rewrites of the design card §5 (what the optimized path needs): blocks
  up to the last extracted layer only, a per-channel filter folded away, one merged 7×7 depthwise conv, the head's
  output layer folded into each level's last linear, and for seg the 1×1 conv before the upsample (which then
  runs on C channels). Throughput rates of every backend use this count: it is the work the model needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per frame, by part of the model."""

    patch_embed: int
    attention: int
    mlp: int
    adapters: int
    heads: int
    blocks: int  # transformer blocks counted

    @property
    def total(self) -> int:
        return self.patch_embed + self.attention + self.mlp + self.adapters + self.heads

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def dft_filter_flops(h: int, w: int) -> int:
    """rfft2 → complex multiply by the filter → irfft2 of one real `h×w` channel, as dense DFT products."""
    half = w // 2 + 1
    forward = 2 * h * half * w + 4 * half * h * h  # real rows → complex, then complex columns
    inverse = 4 * half * h * h + 2 * h * half * w
    return 2 * (forward + 4 * h * half + inverse)


def adapter_flops(cfg, pruned: bool) -> int:
    tokens, width, r = cfg.num_tokens, cfg.width, cfg.bottleneck
    pixels = cfg.grid * cfg.grid
    quarter = r // 4
    projections = 2 * tokens * width * r * 2  # W1 (D→r) and W2 (r→D)
    depthwise = 2 * r * pixels * (7 * 7 if pruned else 3 * 3 + 5 * 5 + 7 * 7)
    noise = 2 * (r * quarter + quarter * 3)
    projector = 2 * pixels * r * r
    if cfg.filter_kind == "spectral" or not pruned:
        frequency = r * dft_filter_flops(cfg.grid, cfg.grid)
    else:
        frequency = 0
    return projections + depthwise + noise + projector + frequency


def head_flops(cfg, pruned: bool) -> int:
    pixels = cfg.grid * cfg.grid
    dim, classes, levels = cfg.head_dim, cfg.num_classes, len(cfg.extract_layers)
    reduce = 2 * pixels * cfg.width * dim
    first = 2 * pixels * dim * dim
    upsampled = cfg.image_size * cfg.image_size
    if cfg.task == "seg":
        if pruned:
            last = 2 * pixels * dim * classes  # the 1×1 conv folded into the level's last linear
            return levels * (reduce + first + last) + 2 * 4 * upsampled * classes
        last = 2 * pixels * dim * dim
        return levels * (reduce + first + last) + 2 * 4 * upsampled * dim + 2 * upsampled * dim * classes
    out = 2 * dim * classes
    if pruned:
        # The level's last linear and the first head linear fold into one, applied after the (linear) pooling.
        first_head = 2 * levels * dim * (dim if cfg.cls_head == "mlp" else classes)
        return levels * (reduce + first) + first_head + (out if cfg.cls_head == "mlp" else 0)
    last = 2 * pixels * dim * dim
    return levels * (reduce + first + last) + (2 * dim * dim if cfg.cls_head == "mlp" else 0) + out


def count_flops(cfg, pruned: bool = True) -> FlopCount:
    """FLOPs per frame of the model of `cfg` (see the module docstring for what `pruned` changes)."""
    blocks = max(cfg.extract_layers) + 1 if pruned else cfg.layers
    tokens, width = cfg.num_tokens, cfg.width
    pixels = cfg.grid * cfg.grid
    patch_embed = 2 * pixels * (3 * cfg.patch_size * cfg.patch_size) * width
    attention = blocks * (2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width)
    mlp = blocks * 2 * 2 * tokens * width * width * cfg.mlp_ratio
    adapters = sum(1 for layer in cfg.adapter_layers if layer < blocks) * adapter_flops(cfg, pruned)
    return FlopCount(patch_embed=patch_embed, attention=attention, mlp=mlp, adapters=adapters,
                     heads=head_flops(cfg, pruned), blocks=blocks)
