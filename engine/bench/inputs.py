"""Inputs of the frame-preprocessing op for its tests and the benchmarks: Pillow's resize weights as the op takes
them, and seeded frames with them (the adapter ops' inputs are in `htkernels.testing`, which cannot import these
weights from the engine)."""

from __future__ import annotations

import torch

from htkernels.testing import random_frames

from ..optimize.frames import pil_weights


def preprocess_inputs(batch: int, height: int, width: int, size: int, device, rgb: bool = False,
                      seed: int = 1) -> tuple:
    """The positional arguments of `torch.ops.htkernels.preprocess`: seeded uint8 frames, the row and column
    weights, the 1/255 scale and the float32 output dtype."""
    frames = random_frames(batch, height, width, rgb, seed=seed, device=device)
    return frames, pil_weights(height, size, device), pil_weights(width, size, device), 1.0 / 255.0, torch.float32
