"""The frame path on the model's device: uint8 frames in, uint8 masks (seg) or float32 probabilities (cls) out.

`Predictor.predict` otherwise preprocesses on the host (Pillow) and postprocesses there (engine.postprocess); on a
GPU both are a fraction of the forward's work but cost milliseconds on the host, and the float32 `[B,3,224,224]`
batch and the grid logits cross the bus. Here the frames cross once, as uint8, and the masks come back as uint8:

    frames (host)  → staging buffer (pinned on CUDA, one per (B, H, W, C), reused) → one async H2D copy
    → `kernels.preprocess` (Pillow's bicubic, bit-exact; its weights cached per frame size on the device)
    → the model's forward to grid logits `[B,C,g,g]` (cls: logits `[B,C]`)
    → `masks_from_grid` (two torch matmuls per axis with the composed upsample matrices of engine.postprocess,
      cached per frame size on the device) or `probabilities`
    → one async D2H copy into the staging output buffer → one sync.

On CUDA the three device stages run as one CUDA graph per (B, H, W, C), captured by the CUDA-graph runner that also
runs the plain forward (engine.optimize.cuda_runner: same warm-up, same memory pool, same lock); `graphs=None` runs
them eagerly, which is what a CPU device does (the tests drive this path on CPU with the torch provider).

Frames already on the device (an upstream GPU operator's, `run_device`) skip the staging: the same graph per
(B, H, W, C) copies them device to device into its static input, and the masks stay on the device.

The device functions are plain torch and run on CPU tensors too. `masks_from_grid` equals
`engine.postprocess.mask_from_maps` but for ties within float rounding (the order of the float32 sums may differ
from numpy's); `kernels.preprocess` with the torch provider is `htkernels.preprocess.preprocess_ref`, equal to
Pillow's resize.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..errors import InputError
from ..postprocess import composed_upsample_matrix
from ..preprocess import pil_resize_matrix
from .kernels import kernel_errors

# Past this many classes a mask does not fit uint8 (engine.postprocess.mask_from_maps makes the same choice).
UINT8_CLASSES = 256


def pil_weights(in_size: int, out_size: int, device="cpu") -> torch.Tensor:
    """Pillow's fixed-point bicubic weights `[out_size, in_size]` as int32, the layout `htkernels.preprocess` takes."""
    return torch.from_numpy(pil_resize_matrix(in_size, out_size).astype(np.int32)).to(device)


def mask_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= UINT8_CLASSES else torch.int32


def masks_from_grid(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Grid logits `[B,C,g,g]`, per-axis maps `rows [H,g]`, `cols [W,g]` (float32) → class masks `[B,H,W]` of
    `argmax_c(rows · L_c · colsᵀ)`; two classes: `rows · (L_1 − L_0) · colsᵀ > 0` (a tie is class 0)."""
    logits = logits.float()
    if logits.shape[1] == 2:
        difference = logits[:, 1] - logits[:, 0]
        return (torch.matmul(torch.matmul(rows, difference), cols.t()) > 0).to(torch.uint8)
    maps = torch.matmul(torch.matmul(rows, logits), cols.t())
    return torch.argmax(maps, dim=1).to(mask_dtype(logits.shape[1]))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class logits `[B,C]` → float32 probabilities `[B,C]` (softmax in fp32)."""
    return torch.softmax(logits.float(), dim=-1)


class FramePipeline:
    """`pipeline(frames)`: a list of uint8 frames of one shape (`[H,W]` or `[H,W,3]`) → numpy uint8 masks `[B,H,W]`
    (seg) or float32 probabilities `[B,C]` (cls), every stage but the staging copies on `device`.

    `model` is an `OptimizedHTModel` on `device`: its config gives the task and the preprocessing, its
    adapter-kernel provider runs `preprocess`, `model(images, grid=True)` gives grid logits (seg) or class logits
    (cls). `graphs` (CUDA only) is the `CudaGraphRunner` whose `replay` runs `compute` as one graph per frame
    shape; None runs it eagerly."""

    def __init__(self, model, device, graphs=None):
        config = model.cfg
        self.model = model
        self.kernels = model.kernels
        self.device = torch.device(device)
        self.task = config.task
        self.num_classes = config.num_classes
        self.image_size = config.image_size
        pre = config.preprocessing
        self.size = int(pre["size"])
        self.scale = float(np.float32(pre["scale"]))  # a float32 value: the product below rounds as numpy's
        self.mean = None if pre.get("mean") is None else float(pre["mean"])
        self.std = None if pre.get("std") is None else float(pre["std"])
        self.graphs = graphs
        self._weights: dict = {}
        self._upsample: dict = {}
        self._staging: dict = {}
        self._lock = threading.Lock()

    def resize_weights(self, height: int, width: int) -> tuple:
        """`(row_weights [S,H], col_weights [S,W])` int32 on the device, made once per frame size."""
        key = (height, width)
        if key not in self._weights:
            self._weights[key] = (pil_weights(height, self.size, self.device), pil_weights(width, self.size, self.device))
        return self._weights[key]

    def upsample_maps(self, height: int, width: int) -> tuple:
        """`(rows [H,g], cols [W,g])` float32 on the device: the composed upsample matrices, once per frame size."""
        key = (height, width)
        if key not in self._upsample:
            grid = self.model.head.grid
            self._upsample[key] = tuple(
                torch.from_numpy(np.array(composed_upsample_matrix(grid, self.image_size, n))).to(self.device)
                for n in (height, width))
        return self._upsample[key]

    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames `[B,H,W(,3)]` on the device → the float32 model input `[B,3,S,S]` (engine.preprocess's)."""
        row_weights, col_weights = self.resize_weights(frames.shape[1], frames.shape[2])
        # The kernels return Pillow's uint8 values exactly at scale 1; the scale is then applied in float32 as
        # engine.preprocess does (the providers round `value * scale` differently: in fp64 or in fp32).
        images = self.kernels.preprocess(frames, row_weights, col_weights, 1.0, torch.float32) * self.scale
        if self.mean is not None:
            images = (images - self.mean) / self.std
        return images

    def compute(self, frames: torch.Tensor) -> torch.Tensor:
        """The device stages: uint8 frames `[B,H,W(,3)]` → masks `[B,H,W]` or probabilities `[B,C]` on the device.
        Every tensor it needs beyond its input is cached on the first call of a shape (before any graph capture)."""
        images = self.images(frames)
        if self.task == "seg":
            rows, cols = self.upsample_maps(frames.shape[1], frames.shape[2])
            return masks_from_grid(self.model(images, grid=True), rows, cols)
        return probabilities(self.model(images))

    def _buffers(self, shape: tuple) -> tuple:
        """The host staging pair `(frames uint8 [B,H,W(,C)], outputs)` of one batch shape, allocated once and
        reused; pinned on CUDA so the copies run asynchronously."""
        if shape not in self._staging:
            pin = self.device.type == "cuda"
            if self.task == "seg":
                out_shape, out_dtype = shape[:3], mask_dtype(self.num_classes)
            else:
                out_shape, out_dtype = (shape[0], self.num_classes), torch.float32
            self._staging[shape] = (torch.empty(shape, dtype=torch.uint8, pin_memory=pin),
                                    torch.empty(out_shape, dtype=out_dtype, pin_memory=pin))
        return self._staging[shape]

    def run_device(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames `[B,H,W(,3)]` as a torch tensor already on this pipeline's device → masks `[B,H,W]` (seg) or
        probabilities `[B,C]` (cls), a new tensor on the device: `__call__` without the host staging (the frames are
        read in place; on CUDA the output is a copy of the graph's buffer, which the next call reuses)."""
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.shape[0] < 1 or \
                not (frames.dim() == 3 or (frames.dim() == 4 and frames.shape[3] == 3)):
            raise InputError(f"device frames are a uint8 torch tensor [B,H,W] or [B,H,W,3] with B >= 1, got "
                             f"{getattr(frames, 'dtype', type(frames).__name__)} "
                             f"{list(getattr(frames, 'shape', []))}")
        if frames.device != self.device:
            raise InputError(f"device frames are on {frames.device}, but this frame path runs on {self.device}; load "
                             f"the predictor on the frames' device (device={str(frames.device)!r})")
        with self._lock, kernel_errors():
            if self.graphs is None:
                with torch.inference_mode():
                    return self.compute(frames.contiguous())
            return self.graphs.replay(("frames", tuple(frames.shape)), frames, self.compute, torch.Tensor.clone)

    def __call__(self, frames: list) -> np.ndarray:
        if not frames:
            raise InputError("run_frames needs at least one frame")
        first = np.asarray(frames[0])
        if first.dtype != np.uint8 or not (first.ndim == 2 or (first.ndim == 3 and first.shape[2] == 3)):
            raise InputError(f"expected uint8 frames of shape HxW or HxWx3, got {first.dtype} {list(first.shape)}")
        for index, frame in enumerate(frames):
            if np.shape(frame) != first.shape:
                raise InputError(f"run_frames takes frames of one shape: frame {index} has shape "
                                 f"{list(np.shape(frame))}, frame 0 {list(first.shape)}")
        shape = (len(frames),) + first.shape
        # One call at a time: the staging buffers of a shape are shared, and on CUDA the sync below is what makes
        # them free again.
        with self._lock, kernel_errors():
            host_frames, host_out = self._buffers(shape)
            np.stack(frames, out=host_frames.numpy())
            if self.graphs is None:
                with torch.inference_mode():
                    host_out.copy_(self.compute(host_frames.to(self.device)))
            else:
                self.graphs.replay(("frames", shape), host_frames, self.compute,
                                   lambda out: host_out.copy_(out, non_blocking=True))
                torch.cuda.current_stream(self.device).synchronize()
            return host_out.numpy().copy()
