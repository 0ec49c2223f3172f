"""`Predictor`: load a package (or built artifact) on a backend, then `forward` tensors or `predict` raw frames.

The runtime is the one place that decides how a source reaches a runner: a package runs on a package backend
(`reference`, `optimized`) directly; a package asked for on an artifact backend (`onnx`, `aoti`, `tensorrt`) is
first built into a temporary artifact (`build_temporary_artifact`); an artifact directory runs on its own backend.
Backends only load what they are given.

This module imports no torch at import time: the ONNX/TensorRT runtimes must work where torch is absent.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .artifacts import Artifact, open_artifact
from .backends import backend_module, backend_status
from .errors import BackendError, InputError, PackageError
from .export.manifest import ARTIFACT_BACKENDS, DIGEST_KEY
from .package import LoadedPackage, load_package
from .postprocess import FrameResult, results_from_logits, results_from_outputs
from .preprocess import check_frame, preprocess_frames
from .threads import apply_budget, budget
from .version import __version__

if TYPE_CHECKING:
    import torch


def _usable_backend(name: str, device: str):
    """The module of backend `name`, or a `BackendError` saying why it cannot run on `device`."""
    module = backend_module(name)
    usable, reason = backend_status(name, device)
    if not usable:
        raise BackendError(f"backend {name!r} cannot run on {device!r}: {reason}")
    return module


def _load_runner(name: str, source, device: str, precision: str):
    return _usable_backend(name, device).load(source, device, precision)


def artifact_backend(artifact: Artifact, backend: str | None, precision: str) -> str:
    """The backend that runs `artifact`: its own. `backend` may name it (or be None); a precision other than the
    default fp32 must be the one it was built for."""
    manifest, directory = artifact.manifest, artifact.directory
    built = manifest["backend"]
    if backend not in (None, built):
        raise PackageError(f"{directory} is a {built!r} artifact; it cannot run on backend {backend!r} "
                           f"(run it on backend {built!r} or name no backend; backends 'reference' and 'optimized' "
                           f"run the package it was built from)")
    if precision not in ("fp32", manifest["precision"]):
        raise PackageError(f"{directory} was built for precision {manifest['precision']!r}, not {precision!r}; "
                           f"run it at its own precision (name none), or build an artifact for {precision!r} with a "
                           f"backend that builds it (`ht-engine build` names the precisions each backend builds)")
    return built


def build_temporary_artifact(package: LoadedPackage, backend: str, precision: str, device: str) -> Artifact:
    """Build `package` for an artifact backend into a temporary directory that lives as long as the returned
    artifact (and so as long as the runner that keeps it)."""
    from .export.build import DEFAULT_BATCH, build_artifact

    holder = tempfile.TemporaryDirectory(prefix=f"ht-{backend}-")
    out = build_artifact(package, backend, precision, DEFAULT_BATCH, Path(holder.name) / "artifact", device=device)
    artifact = open_artifact(out)
    artifact.keepalive = holder
    return artifact


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


class Predictor:
    """Runs an HT model. Create with `Predictor.load(path, backend=..., device=..., precision=...)`."""

    def __init__(self, runner, *, task: str, classes: list, preprocessing: dict, image_size: int, backend: str,
                 source: Path, sha256: str = "", artifact_sha256: str | None = None):
        self.runner = runner
        self.task = task
        self.classes = list(classes)
        self.preprocessing = dict(preprocessing)
        self.image_size = image_size
        self.backend = backend
        self.source = source
        self.sha256 = sha256
        self.artifact_sha256 = artifact_sha256
        # What `backend="auto"` picked and the table it picked from (`engine.autoselect.Choice.record()`), or None.
        self.auto_choice = None
        # Seg results carry per-pixel class probabilities (`with_probability_maps`); off: the masks-only frame path.
        self.probability_maps = False
        apply_budget()

    def with_probability_maps(self) -> "Predictor":
        """This predictor (same runner, shared) whose seg results also carry `FrameResult.probability_maps`: float32
        `[C,H,W]`, the softmax over classes of the logits upsampled to the frame (the maps the masks are the argmax
        of). A runner's fused frame path (`run_frames`) returns masks only, so this view takes the grid or logits
        path (host pre- and postprocessing); `self` keeps its own path."""
        if self.task != "seg":
            raise InputError(f"per-pixel class probabilities need a segmentation model; {self.source} is a "
                             f"{self.task!r} model (its class probabilities are FrameResult.probabilities)")
        if self.runner.run is None and self.runner.run_grid is None:
            raise InputError(f"{self.source} is a frame artifact: it returns masks only, not per-pixel class "
                             f"probabilities; use the package, or an artifact built without --frame-size")
        view = copy.copy(self)
        view.probability_maps = True
        return view

    def provenance(self) -> dict:
        """What really runs: backend, precision, device, the package (and artifact) sha256, the engine version —
        for every record of results (predictions.json, stream reports, bench)."""
        return {"engine_version": __version__, "backend": self.backend, "precision": self.runner.precision,
                "device": self.runner.device, "source": str(self.source), "package_sha256": self.sha256,
                "artifact_manifest_sha256": self.artifact_sha256, "threads": budget(),
                **({"auto": self.auto_choice} if self.auto_choice is not None else {})}

    @classmethod
    def load(cls, path: str | Path, backend: str | None = None, device: str = "cpu", precision: str = "fp32", *,
             kernels: str | None = None) -> "Predictor":
        """Load a package or a built artifact directory. `backend=None` means `reference` for a package and the
        artifact's own backend for an artifact; `"auto"` the fastest usable one for a package (measured once per
        machine, `engine.autoselect`; `precision="auto"` lets it pick the precision too) and the artifact's own for an
        artifact. `kernels` picks the adapter kernels of `backend="optimized"`:
        "triton" (the default on CUDA when Triton is installed), "cuda" (the CUDA C++ kernels of htkernels._C) or
        "torch" (plain torch ops, the CPU path)."""
        path = Path(path)
        if kernels is not None and backend != "optimized":
            raise BackendError(f"kernels={kernels!r} selects the adapter kernels of backend 'optimized'; "
                               f"backend {backend!r} has no kernel choice")
        if path.is_dir():
            if backend == "auto":  # an artifact runs on its own backend, at the precision it was built for
                backend, precision = None, "fp32" if precision == "auto" else precision
            artifact = open_artifact(path)
            name = artifact_backend(artifact, backend, precision)
            runner = _load_runner(name, artifact, device, artifact.manifest["precision"])
            model = artifact.manifest["model"]
            return cls(runner, task=model["task"], classes=model["classes"],
                       preprocessing=artifact.manifest["preprocessing"], image_size=model["image_size"],
                       backend=name, source=path, sha256=artifact.manifest["package_sha256"],
                       artifact_sha256=artifact.manifest.get(DIGEST_KEY))
        if not path.exists():
            raise PackageError(f"{path} does not exist: expected a .htpkg package or a built artifact directory")
        if backend == "auto":
            return cls._load_auto(path, device, precision)
        name = backend or "reference"
        module = _usable_backend(name, device)
        package = load_package(path)
        if name in ARTIFACT_BACKENDS:
            runner = module.load(build_temporary_artifact(package, name, precision, device), device, precision)
        elif kernels is not None:
            runner = module.load(package, device, precision, kernels=kernels)
        else:
            runner = module.load(package, device, precision)
        cfg = package.config
        return cls(runner, task=cfg.task, classes=cfg.classes, preprocessing=cfg.preprocessing,
                   image_size=cfg.image_size, backend=name, source=path, sha256=package.sha256)

    @classmethod
    def _load_auto(cls, path: Path, device: str, precision: str) -> "Predictor":
        from .autoselect import choose

        package = load_package(path)

        def load(name: str, chosen_precision: str):
            module = _usable_backend(name, device)
            if name in ARTIFACT_BACKENDS:
                source = build_temporary_artifact(package, name, chosen_precision, device)
                return module.load(source, device, chosen_precision)
            return module.load(package, device, chosen_precision)

        choice = choose(package.config, device, precision, load)
        runner = choice.runner or load(choice.backend, choice.precision)
        cfg = package.config
        predictor = cls(runner, task=cfg.task, classes=cfg.classes, preprocessing=cfg.preprocessing,
                        image_size=cfg.image_size, backend=choice.backend, source=path, sha256=package.sha256)
        predictor.auto_choice = choice.record()
        return predictor

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

    def forward(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """float32 `[B,3,S,S]` (torch tensor or numpy) → logits of the same kind: seg `[B,C,S,S]`, cls `[B,C]`."""
        if self.runner.run is None:
            shape = "x".join(map(str, self.runner.frame_shape))
            raise InputError(f"{self.source} is a frame artifact (uint8 frames {shape} in, "
                             f"{'masks' if self.task == 'seg' else 'probabilities'} out): it takes raw frames through "
                             f"predict(), not preprocessed tensors through forward(); build without --frame-size for "
                             f"a tensor artifact")
        return self._check_logits(self._forward(x), x.shape[0])

    def _check_logits(self, logits, batch: int):
        """A model file that does not fit its manifest (swapped for another model with its hash updated) shows here:
        refused by name instead of failing later on an index."""
        size = self.image_size
        expected = (batch, self.num_classes, size, size) if self.task == "seg" else (batch, self.num_classes)
        if tuple(logits.shape) != expected:
            raise PackageError(f"{self.source} produced logits of shape {list(logits.shape)}, but its "
                               f"{'manifest' if self.artifact_sha256 else 'config'} states a {self.task} model with "
                               f"{self.num_classes} classes ({list(expected)}): the model file does not match it")
        return logits

    def _forward(self, x):
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

    def preprocess(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Raw uint8 frames → the float32 batch `forward` takes, with this model's preprocessing."""
        return preprocess_frames(frames, self.preprocessing)

    def predict(self, frames: np.ndarray | Sequence[np.ndarray], batch_size: int = 8) -> list[FrameResult]:
        """Raw uint8 frames (one HxW / HxWx3 array or a sequence of them, any size) → one `FrameResult` each.

        The frame path runs in the runner where it can (`Runner.run_frames`: on the device, or inside a frame
        artifact's graph); otherwise frames are preprocessed here (Pillow's exact resize) and seg logits taken from
        the head's grid when the runner offers them (`Runner.run_grid`: no 224² tensor), each mask made at its
        frame's size in one separable step (engine.postprocess)."""
        if isinstance(frames, np.ndarray) and (frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] == 3)):
            frames = [frames]  # one gray HxW or RGB HxWx3 frame; [T,H,W] and [T,H,W,3] arrays are stacks
        frames = [check_frame(frame, index) for index, frame in enumerate(frames)]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if self.runner.max_batch is not None:
            batch_size = min(batch_size, self.runner.max_batch)
        results = []
        for start in range(0, len(frames), batch_size):
            results += self._predict_chunk(frames[start:start + batch_size], start)
        return results

    def _predict_chunk(self, chunk: list, first: int) -> list:
        sizes = [frame.shape[:2] for frame in chunk]
        return self.results(self.infer_batch(self.prepare(chunk), first), sizes, first)

    @property
    def frame_path(self) -> str:
        """How raw frames become results here: "frames" (the runner's `run_frames` does it all, pre- and
        postprocessing fused into inference), "grid" (host preprocessing, seg logits on the head's grid, masks in one
        separable step) or "logits" (host preprocessing, `forward`, masks from full logits). A predictor that keeps
        probability maps (`with_probability_maps`) never takes "frames"."""
        if self.runner.run_frames is not None and not self.probability_maps:
            return "frames"
        if self.task == "seg" and self.runner.run_grid is not None:
            return "grid"
        return "logits"

    @property
    def takes_device_frames(self) -> bool:
        """Whether `infer_device_frames` runs: the runner's whole frame path is on a CUDA device and takes frames
        already there (`Runner.run_device_frames`: the optimized backend on CUDA). Never on a CPU runner, nor with
        probability maps (they are made on the host)."""
        return (self.frame_path == "frames" and self.runner.run_device_frames is not None
                and str(self.runner.device).startswith("cuda"))

    def infer_device_frames(self, frames):
        """uint8 frames `[B,H,W]`/`[B,H,W,3]` as a torch tensor on the runner's CUDA device (an upstream GPU
        operator's, through DLPack) → the masks `[B,H,W]` (seg) or probabilities `[B,C]` (cls) as a torch tensor on
        that device; no host copy either way. `results(outputs.cpu().numpy(), sizes)` makes `FrameResult`s of them.
        Only where `takes_device_frames`; elsewhere `predict` takes host frames."""
        if not self.takes_device_frames:
            raise BackendError(f"{self.source} on backend {self.backend!r} ({self.runner.device}) takes host frames "
                               f"only: device frames need the optimized backend on CUDA (use predict() with host "
                               f"frames here)")
        outputs = self.runner.run_device_frames(frames)
        if outputs.shape[0] != frames.shape[0]:
            raise BackendError(f"{self.source}: the runner returned {outputs.shape[0]} outputs for "
                               f"{frames.shape[0]} device frames")
        return outputs

    def prepare(self, frames: list):
        """Checked uint8 frames → what `infer_batch` takes: the frames themselves on the "frames" path (the runner
        preprocesses), else the preprocessed float32 batch (`preprocess`)."""
        if self.frame_path == "frames":
            return [check_frame(frame, index) for index, frame in enumerate(frames)]
        return self.preprocess(frames)

    def infer_batch(self, prepared, first_index: int = 0):
        """What `prepare` made (a list of frames, or a float32 `[B,3,S,S]` batch: numpy, or a torch tensor on the
        runner's device) → the outputs `results` takes: per-frame masks/probabilities ("frames"), grid logits
        ("grid") or logits ("logits"), as numpy."""
        path = self.frame_path
        if path == "frames":
            return self._run_frames(prepared, first_index)
        if path == "grid":
            return self._run_grid(prepared)
        logits = self.forward(prepared)
        return logits.detach().float().cpu().numpy() if _is_torch_tensor(logits) else np.asarray(logits)

    def results(self, outputs, sizes: list, first_index: int = 0) -> list:
        """`infer_batch` outputs and each frame's `(height, width)` → one `FrameResult` per frame."""
        path = self.frame_path
        if path == "frames":
            return results_from_outputs(self.task, outputs, sizes, self.classes, first_index=first_index)
        return results_from_logits(self.task, outputs, sizes, self.classes, first_index=first_index,
                                   image_size=self.image_size if path == "grid" else None,
                                   probability_maps=self.probability_maps)

    def _run_grid(self, batch) -> np.ndarray:
        self._check_batch(batch)
        if _is_torch_tensor(batch):
            logits = self.runner.run_grid(batch.contiguous()).float().cpu().numpy()
        elif self.runner.uses_torch:
            import torch

            logits = self.runner.run_grid(torch.from_numpy(batch)).float().cpu().numpy()
        else:
            logits = np.asarray(self.runner.run_grid(batch), dtype=np.float32)
        if logits.ndim != 4 or logits.shape[:2] != (batch.shape[0], self.num_classes) or \
                logits.shape[2] != logits.shape[3]:
            raise PackageError(f"{self.source} produced grid logits of shape {list(logits.shape)}, expected "
                               f"[{batch.shape[0]},{self.num_classes},g,g]: the model does not match its config")
        return logits

    def _run_frames(self, frames: list, first: int) -> list:
        """Runs of equal-size frames through `Runner.run_frames` (a frame artifact takes one geometry only); one
        output (mask or probabilities) per frame."""
        outputs, start = [], 0
        while start < len(frames):
            end = start + 1
            while end < len(frames) and frames[end].shape == frames[start].shape:
                end += 1
            group = frames[start:end]
            expected = self.runner.frame_shape
            if expected is not None and tuple(group[0].shape) != tuple(expected):
                raise InputError(f"frame {first + start} has shape {list(group[0].shape)}, but {self.source} is a frame "
                                 f"artifact built for frames of shape {list(expected)} (build one with --frame-size "
                                 f"{group[0].shape[0]}x{group[0].shape[1]}, or use the package)")
            produced = np.asarray(self.runner.run_frames(group))
            if len(produced) != len(group):
                raise BackendError(f"{self.source}: the runner returned {len(produced)} outputs for {len(group)} "
                                   f"frames {first + start}..{first + end - 1}")
            outputs += list(produced)
            start = end
        return outputs
