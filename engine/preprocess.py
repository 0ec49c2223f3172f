"""Frame preprocessing: numpy, Pillow and the engine's C extension, no torch (the torch-free runtimes use it too).

`preprocess_frames` runs the training preprocessing: Pillow's `convert("L")` and `resize` with its default
antialiased bicubic, exactly what the authors' checkpoints were trained with. Pillow's own C code takes 4.6 ms for a
1080×1920 gray frame (6.5 ms RGB) on the 2-core development CPU; the C extension `engine._frame_resize`
(csrc/cpu/frame_resize.c, built by setup.py) does the same integer arithmetic, vectorized, in 0.5 ms (0.9 ms;
`python benchmarks/bench_frames.py --host-only`), with the GIL released (stream threads resize in parallel) and the
same bytes as Pillow (tests hold it to Pillow itself). `gray_resize` runs it where it is importable, else Pillow:
same results, slower. `pil_resize_taps` are the coefficient tables the extension takes.

`resize_like_pil` is an independent reproduction of Pillow's resize, the reference the tests hold Pillow and the
in-graph / on-device preprocessing (frame artifacts, CUDA kernels) to: it reproduces Pillow's `Image.resize(size)`
default filter (bicubic, a=-0.5, antialiased: the kernel support grows with the downscale factor) for 8-bit images,
including its fixed-point coefficients (22 fractional bits) and the uint8 rounding between the horizontal and the
vertical pass. Products of the integer coefficients and uint8 pixels stay below 2**53, so float64 matrix products
are exact.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from htkernels.pillow import vertical_pass_first

from .errors import InputError

try:
    from ._frame_resize import gray_resize as _native_gray_resize
except ImportError:  # not built (no C compiler at install time): Pillow does the work
    _native_gray_resize = None

_PRECISION_BITS = 32 - 8 - 2
_BICUBIC_A = -0.5
_BICUBIC_SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def pil_resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's windows and fixed-point coefficients (22 fractional bits, rounded half away from zero) of one resize
    pass: output `i` is `sum(coeffs[i, k] * input[first[i] + k] for k < count[i])`. Returns `first` int32
    `[out_size]`, `count` int32 `[out_size]`, `coeffs` int32 `[out_size, taps]` (zero past each window), read-only."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    first = np.zeros(out_size, dtype=np.int32)
    count = np.zeros(out_size, dtype=np.int32)
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = np.arange(xmin, xmax, dtype=np.float64)
        weights = _bicubic((taps - center + 0.5) / filterscale)
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        scaled = weights * (1 << _PRECISION_BITS)
        rows.append(np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)))
        first[xx], count[xx] = xmin, xmax - xmin
    coeffs = np.zeros((out_size, int(count.max())), dtype=np.int32)
    for xx, row in enumerate(rows):
        coeffs[xx, : row.size] = row
    for table in (first, count, coeffs):
        table.flags.writeable = False
    return first, count, coeffs


@functools.lru_cache(maxsize=64)
def pil_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Fixed-point coefficient matrix `[out_size, in_size]` (integers stored as float64) of one resize pass."""
    first, count, coeffs = pil_resize_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        matrix[xx, first[xx]: first[xx] + count[xx]] = coeffs[xx, : count[xx]]
    return matrix


def _fixed_point_to_uint8(acc: np.ndarray) -> np.ndarray:
    rounded = np.floor((acc + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS))
    return np.clip(rounded, 0, 255).astype(np.uint8)


def resize_like_pil(gray: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """uint8 `[H,W]` → uint8 `[out_h,out_w]`, as `PIL.Image.fromarray(gray).resize((out_w,out_h))`."""
    height, width = gray.shape

    def horizontal(image):
        return _fixed_point_to_uint8(image.astype(np.float64) @ pil_resize_matrix(width, out_w).T)

    def vertical(image):
        return _fixed_point_to_uint8(pil_resize_matrix(height, out_h) @ image.astype(np.float64))

    passes = []
    if width != out_w:
        passes.append(horizontal)
    if height != out_h:
        passes.insert(0 if vertical_pass_first(height, width, out_h, out_w) else len(passes), vertical)
    out = gray
    for resample in passes:
        out = resample(out)
    return np.ascontiguousarray(out)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """uint8 HxW or HxWx3 (RGB) → uint8 HxW with Pillow's `convert("L")` integer formula (ITU-R 601-2 luma)."""
    if frame.ndim == 2:
        return frame
    rgb = frame.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)


def gray_resize(frame: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """uint8 HxW / HxWx3 (any strides; `check_frame`) → uint8 `[out_h, out_w]`, the bytes of Pillow's
    `Image.fromarray(frame).convert("L").resize((out_w, out_h), BICUBIC)`: the C extension where it is built,
    else Pillow itself."""
    if out_h < 1 or out_w < 1:
        raise InputError(f"resize: expected an output size of at least 1x1, got {out_h}x{out_w}")
    frame = np.ascontiguousarray(check_frame(frame))
    height, width = frame.shape[:2]
    if _native_gray_resize is None:
        image = Image.fromarray(frame)
        if frame.ndim == 3:
            image = image.convert("L")
        if image.size != (out_w, out_h):
            image = image.resize((out_w, out_h), Image.Resampling.BICUBIC)
        return np.asarray(image)
    out = np.empty((out_h, out_w), dtype=np.uint8)
    rows = pil_resize_taps(height, out_h) if height != out_h else None
    cols = pil_resize_taps(width, out_w) if width != out_w else None
    _native_gray_resize(frame, out, rows, cols, vertical_pass_first(height, width, out_h, out_w))
    return out


def native_resize_available() -> bool:
    """Whether `gray_resize` runs the C extension `engine._frame_resize` (else Pillow)."""
    return _native_gray_resize is not None


def pil_gray_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxW / HxWx3 → uint8 `[size,size]`: Pillow's `convert("L")` (RGB) then `resize` with its default
    filter (bicubic, antialiased), the preprocessing the authors' checkpoints were trained with (`gray_resize`)."""
    return gray_resize(frame, size, size)


def check_frame(frame, index: int = 0) -> np.ndarray:
    """A raw frame as a uint8 HxW or HxWx3 array, or an `InputError` saying what it is instead."""
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise InputError(f"frame {index}: expected uint8 pixels, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise InputError(f"frame {index}: expected a HxW (gray) or HxWx3 (RGB) array, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"frame {index}: empty frame of shape {array.shape}")
    return array


def preprocess_frames(frames, preprocessing: dict) -> np.ndarray:
    """Raw uint8 frames → float32 `[B,3,S,S]` with the package's preprocessing (gray, PIL resize, scale)."""
    if preprocessing.get("resize") != "pil_bicubic" or not preprocessing.get("grayscale", False):
        raise InputError(f"unsupported preprocessing {preprocessing}; this engine implements grayscale + pil_bicubic")
    size = int(preprocessing["size"])
    scale = np.float32(preprocessing.get("scale", 1.0 / 255.0))
    batch = np.empty((len(frames), int(preprocessing.get("channels", 3)), size, size), dtype=np.float32)
    mean, std = preprocessing.get("mean"), preprocessing.get("std")
    for index, frame in enumerate(frames):
        # The first channel is computed in place in the batch, the others copied from it.
        plane = batch[index, 0]
        np.multiply(pil_gray_resize(check_frame(frame, index), size), scale, out=plane, dtype=np.float32)
        if mean is not None:
            np.subtract(plane, np.float32(mean), out=plane)
            np.divide(plane, np.float32(std), out=plane)
        batch[index, 1:] = plane
    return batch
