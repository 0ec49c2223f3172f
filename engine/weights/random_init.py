"""Seeded random package tensors for `ht-engine init`, tests and the demo.

The adapter parameters are spread away from their training init (γ is not 1e-6, γx and the filters are not 1, the
noise estimator does not give equal weights) so that a bug in any adapter term changes the output visibly.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..model import HTModel


def random_package_tensors(cfg: ModelConfig, seed: int = 0, calibrate: bool = True) -> dict:
    """Seeded random tensors for `cfg`. `calibrate` centres the output bias on synthetic ultrasound frames so
    that the classes split the pixels (or frames) instead of one class winning everywhere, which would make
    mask-agreement checks meaningless."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=generator) * std + mean

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HTModel(cfg).state_dict().items()}
    tensors = {}
    for name, shape in sorted(shapes.items()):
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("adapter.gamma"):
            value = uniform(shape, 0.05, 0.6)
        elif name.endswith("adapter.gammax"):
            value = uniform(shape, 0.6, 1.4)
        elif name.endswith("freq_filter"):
            value = uniform(shape, 0.4, 1.6) if len(shape) == 1 else normal(shape, 0.5) + _unit_real(shape)
        elif name.endswith("noise2.bias"):
            value = normal(shape, 1.0)
        elif name.endswith(("cls_token", "pos_embed")):
            value = normal(shape, 0.5)
        elif leaf == "weight" and len(shape) == 1:  # LayerNorm scales
            value = normal(shape, 0.1, 1.0)
        elif leaf == "bias":
            value = normal(shape, 0.02)
        else:
            fan_in = 1
            for dim in shape[1:]:
                fan_in *= dim
            value = normal(shape, fan_in ** -0.5)
        tensors[name] = value.to(torch.float32).contiguous()
    if calibrate:
        _centre_output_bias(cfg, tensors, seed)
    return tensors


@torch.inference_mode()
def _centre_output_bias(cfg: ModelConfig, tensors: dict, seed: int) -> None:
    from ..preprocess import preprocess_frames
    from ..synthetic import synthetic_frame

    frames = [synthetic_frame(256, 320, seed=seed * 7 + k)[0] for k in range(2)]
    batch = torch.from_numpy(preprocess_frames(frames, cfg.preprocessing))
    model = HTModel(cfg).eval()
    model.load_state_dict(tensors, strict=True)
    logits = model(batch)
    per_class = logits.transpose(0, 1).reshape(cfg.num_classes, -1)
    tensors["head.out.bias"] = (tensors["head.out.bias"] - per_class.median(dim=1).values).contiguous()


def _unit_real(shape) -> torch.Tensor:
    unit = torch.zeros(shape)
    unit[..., 0] = 1.0
    return unit
