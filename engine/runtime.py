"""`Predictor`: load a package (or built artifact) on a backend, then `forward` tensors or `predict` raw frames.

This module imports no torch at import time: the ONNX/TensorRT runtimes must work where torch is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import backend_module, backend_status
from .errors import BackendError, InputError, PackageError
from .postprocess import results_from_logits
from .preprocess import check_frame, preprocess_frames


@dataclass
class LoadedPackage:
    """A verified package: config, tensors, the sha256 of its tensors and where it came from."""

    config: object
    tensors: dict
    sha256: str
    path: Path


def load_package(path) -> LoadedPackage:
    from .package import read_package

    config, tensors, sha = read_package(path)
    return LoadedPackage(config, tensors, sha, Path(path))


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


class Predictor:
    """Runs an HT model. Create with `Predictor.load(path, backend=..., device=..., precision=...)`."""

    def __init__(self, runner, *, task: str, classes: list, preprocessing: dict, image_size: int, backend: str,
                 source: Path, sha256: str = ""):
        self.runner = runner
        self.task = task
        self.classes = list(classes)
        self.preprocessing = dict(preprocessing)
        self.image_size = image_size
        self.backend = backend
        self.source = source
        self.sha256 = sha256

    @classmethod
    def load(cls, path, backend: str = "reference", device: str = "cpu", precision: str = "fp32", *,
             kernels: str | None = None) -> "Predictor":
        """`kernels` picks the adapter kernels of `backend="optimized"`: "triton" (the default on CUDA when Triton
        is installed), "cuda" (the CUDA C++ kernels of htkernels._C) or "torch" (plain torch ops, the CPU path)."""
        path = Path(path)
        if kernels is not None and backend != "optimized":
            raise BackendError(f"kernels={kernels!r} selects the adapter kernels of backend 'optimized'; "
                               f"backend {backend!r} has no kernel choice")
        if path.is_dir():
            from .artifacts import load_artifact_predictor

            return load_artifact_predictor(cls, path, backend=backend, device=device, precision=precision)
        if not path.exists():
            raise PackageError(f"{path} does not exist: expected a .htpkg package or a built artifact directory")
        module = backend_module(backend)
        usable, reason = backend_status(backend, device)
        if not usable:
            raise BackendError(f"backend {backend!r} cannot run on {device!r}: {reason}")
        package = load_package(path)
        runner = module.load(package, device, precision) if kernels is None else \
            module.load(package, device, precision, kernels=kernels)
        cfg = package.config
        return cls(runner, task=cfg.task, classes=cfg.classes, preprocessing=cfg.preprocessing,
                   image_size=cfg.image_size, backend=backend, source=path, sha256=package.sha256)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _check_batch(self, x):
        expected = (3, self.image_size, self.image_size)
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1:] != expected:
            raise InputError(f"forward expects a preprocessed batch of shape [B,{','.join(map(str, expected))}], "
                             f"got {list(shape)}; use predict() for raw frames")
        if shape[0] < 1:
            raise InputError("forward got an empty batch (B=0)")
        if self.runner.max_batch is not None and shape[0] > self.runner.max_batch:
            raise InputError(f"batch of {shape[0]} exceeds this artifact's maximum batch {self.runner.max_batch}")

    def forward(self, x):
        """float32 `[B,3,S,S]` (torch tensor or numpy) → logits of the same kind: seg `[B,C,S,S]`, cls `[B,C]`."""
        if _is_torch_tensor(x):
            import torch

            self._check_batch(x)
            if x.dtype != torch.float32:
                raise InputError(f"forward expects float32 input, got {x.dtype}")
            if not bool(torch.isfinite(x).all()):
                raise InputError("forward input contains NaN or infinite values")
            if self.runner.uses_torch:
                out = self.runner.run(x.contiguous())
                return out if out.device == x.device else out.to(x.device)  # logits where the input lives
            return torch.from_numpy(np.asarray(self.runner.run(x.detach().cpu().numpy()))).to(x.device)
        if not isinstance(x, np.ndarray):
            raise InputError(f"forward expects a torch tensor or numpy array, got {type(x).__name__}")
        self._check_batch(x)
        if x.dtype != np.float32:
            raise InputError(f"forward expects float32 input, got {x.dtype}")
        if not np.isfinite(x).all():
            raise InputError("forward input contains NaN or infinite values")
        x = np.ascontiguousarray(x)
        if self.runner.uses_torch:
            import torch

            return self.runner.run(torch.from_numpy(x)).float().cpu().numpy()
        return np.asarray(self.runner.run(x), dtype=np.float32)

    def preprocess(self, frames) -> np.ndarray:
        """Raw uint8 frames → the float32 batch `forward` takes, with this model's preprocessing."""
        return preprocess_frames(frames, self.preprocessing)

    def predict(self, frames, batch_size: int = 8) -> list:
        """Raw uint8 frames (one HxW / HxWx3 array or a sequence of them, any size) → one `FrameResult` each."""
        if isinstance(frames, np.ndarray) and (frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] == 3)):
            frames = [frames]  # one gray HxW or RGB HxWx3 frame; [T,H,W] and [T,H,W,3] arrays are stacks
        frames = [check_frame(frame, index) for index, frame in enumerate(frames)]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if self.runner.max_batch is not None:
            batch_size = min(batch_size, self.runner.max_batch)
        results = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start:start + batch_size]
            logits = self.forward(self.preprocess(chunk))
            logits = logits.detach().float().cpu().numpy() if _is_torch_tensor(logits) else np.asarray(logits)
            sizes = [frame.shape[:2] for frame in chunk]
            results += results_from_logits(self.task, logits, sizes, self.classes, first_index=start)
        return results
