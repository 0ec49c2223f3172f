"""Logits → per-frame results, numpy only (shared by every backend, torch-free runtimes included).

A seg mask is `argmax_c` of the logits upsampled bilinearly to the frame (align_corners=False). Upsampling is a
separable linear map, so per axis it is one small matrix, and so is a composition of two of them: from the head's
14×14 grid logits the mask at any frame size is `argmax_c(R_y · L_c · R_xᵀ)` with
`R_y = U(H←224)·U(224←14)` of shape H×14 (and R_x alike), without a 224² tensor. With two classes only the sign of
`L_1 − L_0` matters (one map instead of two). The results equal the two-step upsample up to float rounding: a pixel
can differ only where two classes' upsampled logits tie within that rounding (argmax takes the first of equal
values, and so does the sign test: a tie is class 0).

On request (`probability_maps=True`, for fractional DICOM Segmentations) a seg result also carries the per-pixel class
probabilities: the softmax over classes of the same upsampled logits `R_y · L_c · R_xᵀ`, `[C,H,W]` at the frame's
size. That needs all C maps at full size, so it is computed only when asked; the masks stay exactly as without it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import BackendError


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out_size, in_size]` weights of bilinear resampling with align_corners=False (as `F.interpolate`)."""
    # The float32 scale and the once-rounded source coordinate reproduce PyTorch's CPU kernel bit for bit, so the
    # masks agree with `F.interpolate` even on near-ties.
    scale = float(np.float32(in_size) / np.float32(out_size))
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    for out_index in range(out_size):
        source = max(np.float32(scale * (out_index + 0.5) - 0.5), np.float32(0.0))
        low = min(int(np.floor(source)), in_size - 1)
        high = min(low + 1, in_size - 1)
        frac = min(max(source - np.float32(low), np.float32(0.0)), np.float32(1.0))
        matrix[out_index, low] += 1.0 - frac
        matrix[out_index, high] += frac
    return matrix


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """`[C,h,w]` → `[C,height,width]`, bilinear, align_corners=False."""
    rows = bilinear_matrix(logits.shape[1], height)
    cols = bilinear_matrix(logits.shape[2], width)
    return np.einsum("hi,cij,wj->chw", rows, logits.astype(np.float32), cols, optimize=True)


@functools.lru_cache(maxsize=256)
def composed_upsample_matrix(grid: int, image_size: int, out_size: int) -> np.ndarray:
    """`[out_size, grid]` float32: U(out_size←image_size) · U(image_size←grid), composed in float64."""
    first = bilinear_matrix(grid, image_size).astype(np.float64)
    second = bilinear_matrix(image_size, out_size).astype(np.float64)
    composed = (second @ first).astype(np.float32)
    composed.flags.writeable = False
    return composed


def mask_from_maps(logits: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`[C,h,w]` logits and the per-axis maps `rows [H,h]`, `cols [W,w]` → the uint8 (int32 past 256 classes)
    class mask `[H,W]` of `argmax_c(rows · L_c · colsᵀ)`."""
    logits = logits.astype(np.float32, copy=False)
    if logits.shape[0] == 2:
        return ((rows @ (logits[1] - logits[0])) @ cols.T > 0).astype(np.uint8)
    maps = np.matmul(np.matmul(rows, logits), cols.T)
    return np.argmax(maps, axis=0).astype(np.uint8 if logits.shape[0] <= 256 else np.int32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def probability_maps_from_maps(logits: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`[C,h,w]` logits and the per-axis maps → float32 `[C,H,W]`: the softmax over classes of the upsampled logits
    `rows · L_c · colsᵀ` (the maps whose argmax `mask_from_maps` takes)."""
    maps = np.matmul(np.matmul(rows, logits.astype(np.float32, copy=False)), cols.T)
    return softmax(maps, axis=0).astype(np.float32, copy=False)


@dataclass
class FrameResult:
    """One frame's result: a class mask at the frame's own size (seg) or class probabilities (cls); a seg result
    asked for them (`Predictor.with_probability_maps`) also has `probability_maps`, float32 `[C,H,W]` per-pixel class
    probabilities at the frame's size."""

    index: int
    height: int
    width: int
    mask: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    probability_maps: np.ndarray | None = None

    @property
    def label(self) -> str:
        if self.probabilities is None:
            raise AttributeError("label is only defined for classification results")
        return self.classes[int(np.argmax(self.probabilities))]

    def summary(self) -> dict[str, object]:
        out = {"index": self.index, "height": self.height, "width": self.width}
        if self.mask is not None:
            counts = np.bincount(self.mask.ravel(), minlength=len(self.classes))
            out["class_fractions"] = {c: float(n) / self.mask.size for c, n in zip(self.classes, counts)}
        if self.probabilities is not None:
            out["probabilities"] = {c: float(p) for c, p in zip(self.classes, self.probabilities)}
            out["label"] = self.label
        return out


def results_from_logits(task: str, logits: np.ndarray, sizes: Sequence[tuple[int, int]], classes: Sequence[str],
                        first_index: int = 0, image_size: int | None = None,
                        probability_maps: bool = False) -> list[FrameResult]:
    """Logits of a batch → one `FrameResult` per frame, at the frame's own size (`sizes`: (height, width) each):
    seg logits at the model's input size `[B,C,S,S]`, or, with `image_size` (the model's input size S), grid logits
    `[B,C,g,g]` from before the head's upsample (the composition of the module docstring); cls logits `[B,C]`.
    `probability_maps`: seg results also carry their per-pixel class probabilities (`probability_maps_from_maps`)."""
    results = []
    for offset, (height, width) in enumerate(sizes):
        index = first_index + offset
        if task == "seg":
            maps = logits[offset]
            if image_size is None:
                rows, cols = bilinear_matrix(maps.shape[1], height), bilinear_matrix(maps.shape[2], width)
            else:
                rows = composed_upsample_matrix(maps.shape[1], image_size, height)
                cols = composed_upsample_matrix(maps.shape[2], image_size, width)
            mask = mask_from_maps(maps, rows, cols)
            per_pixel = probability_maps_from_maps(maps, rows, cols) if probability_maps else None
            results.append(FrameResult(index, height, width, mask=mask, classes=list(classes),
                                       probability_maps=per_pixel))
        else:
            probabilities = softmax(logits[offset].astype(np.float64)).astype(np.float32)
            results.append(FrameResult(index, height, width, probabilities=probabilities, classes=list(classes)))
    return results


def results_from_outputs(task: str, outputs: np.ndarray, sizes: list, classes: list, first_index: int = 0) -> list:
    """Per-frame results from a runner that made them itself (`Runner.run_frames`): seg masks `[B,H,W]`, cls
    probabilities `[B,C]`."""
    results = []
    for offset, (height, width) in enumerate(sizes):
        index = first_index + offset
        if task == "seg":
            mask = np.ascontiguousarray(outputs[offset])
            if mask.shape != (height, width):
                raise BackendError(f"frame {index}: the runner returned a mask of shape {list(mask.shape)} for a "
                                 f"{height}x{width} frame")
            results.append(FrameResult(index, height, width, mask=mask, classes=list(classes)))
        else:
            probabilities = np.asarray(outputs[offset], dtype=np.float32)
            results.append(FrameResult(index, height, width, probabilities=probabilities, classes=list(classes)))
    return results
