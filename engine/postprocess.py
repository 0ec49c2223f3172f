"""Logits → per-frame results, numpy only (shared by every backend, torch-free runtimes included)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


@dataclass
class FrameResult:
    """One frame's result: a class mask at the frame's own size (seg) or class probabilities (cls)."""

    index: int
    height: int
    width: int
    mask: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)

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
                        first_index: int = 0) -> list[FrameResult]:
    """Logits of a batch → one `FrameResult` per frame, at the frame's own size (`sizes`: (height, width) each)."""
    results = []
    for offset, (height, width) in enumerate(sizes):
        index = first_index + offset
        if task == "seg":
            upsampled = upsample_logits(logits[offset], height, width)
            mask = np.argmax(upsampled, axis=0).astype(np.uint8 if len(classes) <= 256 else np.int32)
            results.append(FrameResult(index, height, width, mask=mask, classes=list(classes)))
        else:
            probabilities = softmax(logits[offset].astype(np.float64)).astype(np.float32)
            results.append(FrameResult(index, height, width, probabilities=probabilities, classes=list(classes)))
    return results
