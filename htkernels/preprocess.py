"""`preprocess`: uint8 frames → resized (Pillow bicubic, antialiased), scaled, 3-channel batch (htkernels/README.md)."""

from __future__ import annotations

import torch

_PRECISION_BITS = 22


def _round_fixed_point(acc: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.div(acc + (1 << (_PRECISION_BITS - 1)), 1 << _PRECISION_BITS, rounding_mode="floor"),
                       0, 255)


def preprocess_ref(frames: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, scale: float,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """frames uint8 `[B,H,W]` or `[B,H,W,3]`, row_weights int32 `[S,H]`, col_weights int32 `[S,W]` → `[B,3,S,S]`."""
    if frames.dim() == 4:
        rgb = frames.to(torch.int64)
        frames = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    gray = frames.to(torch.float64)
    height, width = gray.shape[1:]
    out_h, out_w = row_weights.shape[0], col_weights.shape[0]
    vertical_first = max(height - out_h, 0) > 2 * max(width - out_w, 0)
    if height != out_h and vertical_first:
        gray = _round_fixed_point(row_weights.to(torch.float64) @ gray)
    if width != out_w:
        gray = _round_fixed_point(gray @ col_weights.to(torch.float64).t())
    if height != out_h and not vertical_first:
        gray = _round_fixed_point(row_weights.to(torch.float64) @ gray)
    plane = (gray * scale).to(out_dtype)
    return plane[:, None].expand(-1, 3, -1, -1).contiguous()
