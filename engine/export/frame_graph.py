"""The graph of a frame artifact (`build --frame-size HxW`): raw uint8 frames in, the uint8 class mask (seg) or the
class probabilities (cls) out, with the preprocessing and the postprocessing of `Predictor.predict` inside it.

Preprocessing is Pillow's, in exact integer arithmetic carried by float32 (every op TensorRT's parser takes):
- RGB → gray: `(R·19595 + G·38470 + B·7471 + 2**15) >> 16`. Every partial sum is an integer below
  255·2**16 + 2**15 < 2**24, so float32 holds it exactly, and the shift is a division by 2**16 and a floor.
- each resize pass (in Pillow's pass order for the frame size) is `clip((Σ k·p + 2**21) >> 22, 0, 255)` with
  Pillow's 22-bit fixed-point coefficients k (`engine.preprocess.pil_resize_matrix`). Σ k·p reaches 2**30, past
  float32's exact integers, so k is split into signed base-256 digits `k = a·2**16 + b·2**8 + c` (|a| < 2**7,
  0 <= b, c < 2**8): the three digit matrices go through one matrix product, each digit sum stays below 2**24
  (`check_exact` refuses a frame size where it would not), and the shift is done digit by digit with carries
  (`_shift_22`). The result equals Pillow's uint8 output on every pixel, also with TF32 matmuls (digits and pixels
  have at most 8 bits).
Then scale (and mean/std), repeated to the model's channels. Postprocessing is the runner's frame path
(`engine.postprocess`): the head's grid logits, one composed upsample matrix per axis (constants of the graph),
argmax over classes (two classes: the sign of the difference, a tie is class 0); cls: softmax.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from htkernels.pillow import vertical_pass_first

from ..errors import BackendError
from ..postprocess import composed_upsample_matrix
from ..preprocess import pil_resize_matrix
from .manifest import FrameSpec

_DIGIT = 256.0
# The largest integer a float32 holds exactly, with its neighbours.
_EXACT = 2 ** 24
_MAX_SEG_CLASSES = 256


def coefficient_digits(matrix: np.ndarray) -> np.ndarray:
    """`[out, in]` integer coefficients → `[3, out, in]` float32 digits `(a, b, c)` with `k = a·2**16 + b·2**8 + c`."""
    high = np.floor(matrix / 65536.0)
    rest = matrix - high * 65536.0
    middle = np.floor(rest / _DIGIT)
    low = rest - middle * _DIGIT
    return np.stack([high, middle, low]).astype(np.float32)


def check_exact(digits: np.ndarray, what: str) -> None:
    """`BackendError` unless every digit sum of a pass over uint8 pixels (plus the rounding offset) stays below
    2**24, where float32 holds integers exactly."""
    worst = float(np.abs(digits.astype(np.float64)).sum(axis=2).max()) * 255.0 + 2 ** 21
    if worst >= _EXACT:
        raise BackendError(f"{what}: a frame this large shrinks too far for the exact in-graph resize (partial sums "
                           f"up to {worst:.0f} >= 2**24); use a smaller --frame-size")


def _shift_22(sums: torch.Tensor) -> torch.Tensor:
    """`[3, ...]` digit sums `(Sa, Sb, Sc)` → `clip(floor((Sa·2**16 + Sb·2**8 + Sc + 2**21) / 2**22), 0, 255)`, every
    intermediate an integer below 2**24 (the carries move the low digits up before each floor)."""
    high, middle, low = sums[0], sums[1], sums[2]
    carry = torch.floor((low + 2.0 ** 21) / _DIGIT)
    carry = torch.floor((middle + carry) / _DIGIT)
    return torch.clamp(torch.floor((high + carry) / 64.0), 0.0, 255.0)


class FramePreprocess(nn.Module):
    """uint8 frames `[B,H,W]` (or `[B,H,W,3]`) → float32 `[B,S,S]` holding Pillow's uint8 gray resize (0..255)."""

    def __init__(self, frame: FrameSpec, size: int):
        super().__init__()
        self.rgb = frame.channels == 3
        passes = []
        if frame.width != size:
            passes.append("horizontal")
        if frame.height != size:
            first = vertical_pass_first(frame.height, frame.width, size, size)
            passes.insert(0 if first else len(passes), "vertical")
        self.passes = tuple(passes)
        # Horizontal: `[B,H,W] @ [W, 3·S]`; vertical: `[3·S, H] @ [B,H,W']`.
        rows = coefficient_digits(pil_resize_matrix(frame.height, size))
        cols = coefficient_digits(pil_resize_matrix(frame.width, size))
        check_exact(rows, f"frame height {frame.height} → {size}")
        check_exact(cols, f"frame width {frame.width} → {size}")
        self.size = size
        self.register_buffer("rows", torch.from_numpy(rows.reshape(3 * size, frame.height)))
        self.register_buffer("cols", torch.from_numpy(np.ascontiguousarray(cols.reshape(3 * size, frame.width).T)))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(torch.float32)
        if self.rgb:
            luma = x[..., 0] * 19595.0 + x[..., 1] * 38470.0 + x[..., 2] * 7471.0 + 32768.0
            x = torch.floor(luma / 65536.0)
        for name in self.passes:
            if name == "horizontal":
                sums = torch.matmul(x, self.cols)
                x = _shift_22(sums.reshape(*sums.shape[:-1], 3, self.size).movedim(-2, 0))
            else:
                sums = torch.matmul(self.rows, x)
                x = _shift_22(sums.reshape(sums.shape[0], 3, self.size, sums.shape[-1]).movedim(1, 0))
        return x


class FrameModel(nn.Module):
    """The whole frame path around the deployable model (`graph.deployable_model`): uint8 frames → uint8 mask
    `[B,H,W]` (seg) or float32 probabilities `[B,C]` (cls)."""

    def __init__(self, model: nn.Module, config, frame: FrameSpec):
        super().__init__()
        frame.validate()
        if config.task == "seg" and config.num_classes > _MAX_SEG_CLASSES:
            raise BackendError(f"a frame artifact's mask is uint8: at most {_MAX_SEG_CLASSES} classes, this model has "
                               f"{config.num_classes}")
        preprocessing = config.preprocessing
        self.preprocess = FramePreprocess(frame, config.image_size)
        self.model = model
        self.task = config.task
        self.channels = int(preprocessing.get("channels", 3))
        self.scale = float(np.float32(preprocessing.get("scale", 1.0 / 255.0)))
        mean, std = preprocessing.get("mean"), preprocessing.get("std")
        self.normalize = None if mean is None else (float(np.float32(mean)), float(np.float32(std)))
        if self.task == "seg":
            grid = config.grid
            self.register_buffer("up_rows", torch.from_numpy(composed_upsample_matrix(grid, config.image_size,
                                                                                      frame.height).copy()))
            self.register_buffer("up_cols_t", torch.from_numpy(
                composed_upsample_matrix(grid, config.image_size, frame.width).T.copy()))

    def model_input(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames → the float32 `[B,channels,S,S]` batch `Predictor.preprocess` makes from them."""
        plane = self.preprocess(frames) * self.scale
        if self.normalize is not None:
            plane = (plane - self.normalize[0]) / self.normalize[1]
        return plane.unsqueeze(1).expand(-1, self.channels, -1, -1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = self.model_input(frames)
        if self.task != "seg":
            return torch.softmax(self.model(images).float(), dim=-1)
        logits = self.model(images, grid=True).float()
        if logits.shape[1] == 2:
            difference = torch.matmul(torch.matmul(self.up_rows, logits[:, 1] - logits[:, 0]), self.up_cols_t)
            return (difference > 0).to(torch.uint8)
        maps = torch.matmul(torch.matmul(self.up_rows, logits), self.up_cols_t)
        return torch.argmax(maps, dim=1).to(torch.uint8)


def frame_model(package, frame: FrameSpec, dtype: torch.dtype = torch.float32) -> FrameModel:
    """The frame graph of `package` for frames of `frame`, in eval mode on CPU."""
    from .graph import deployable_model

    return FrameModel(deployable_model(package.config, package.tensors, dtype), package.config, frame).eval()


def example_frames(frame: FrameSpec, batch: int) -> torch.Tensor:
    """Seeded random uint8 frames `[batch, *frame.shape]` to trace the frame graph with."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, *frame.shape), dtype=torch.uint8, generator=generator)
