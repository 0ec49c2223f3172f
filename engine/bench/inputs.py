"""Inputs of the frame-preprocessing op for its tests and the benchmarks: Pillow's resize weights as the op takes
them, and seeded frames with them (the adapter ops' inputs are in `htkernels.testing`, which cannot import these
weights from the engine)."""

from __future__ import annotations

import numpy as np
import torch

from htkernels.testing import random_frames

from ..preprocess import pil_resize_matrix


def pil_weights(in_size: int, out_size: int, device="cpu") -> torch.Tensor:
    """Pillow's fixed-point bicubic weights `[out_size, in_size]` as int32, the layout `htkernels.preprocess` takes."""
    return torch.from_numpy(pil_resize_matrix(in_size, out_size).astype(np.int32)).to(device)


def preprocess_inputs(batch: int, height: int, width: int, size: int, device, rgb: bool = False,
                      seed: int = 1) -> tuple:
    """The positional arguments of `torch.ops.htkernels.preprocess`: seeded uint8 frames, the row and column
    weights, the 1/255 scale and the float32 output dtype."""
    frames = random_frames(batch, height, width, rgb, seed=seed, device=device)
    return frames, pil_weights(height, size, device), pil_weights(width, size, device), 1.0 / 255.0, torch.float32
