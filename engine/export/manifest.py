"""The artifact manifest as `ht-engine build` writes it: tensor names, the batch range, the file hashes.

The manifest says what the artifact is (backend, precision, batch range, tensor names and shapes), what model it
came from (the package's sha256, task, classes, preprocessing) and which tools made it. It also records the
sha256 of every file of the artifact, so a corrupt or swapped file is refused on load (`engine.artifacts` reads
and verifies it) instead of running.

This module imports no torch: the ONNX and TensorRT runtimes read artifacts where torch is absent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError

MANIFEST = "manifest.json"
FORMAT = "ht-artifact"
FORMAT_VERSION = 2
# Version 1 manifests (written before `manifest_sha256` covered their content) still load, unverified.
LEGACY_FORMAT_VERSIONS = (1,)
DIGEST_KEY = "manifest_sha256"
MAX_BATCH = 8192
ARTIFACT_BACKENDS = ("onnx", "tensorrt", "aoti", "openvino")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Frame artifacts (`build --frame-size`): raw uint8 frames in, a uint8 mask (seg) or probabilities (cls) out.
FRAME_INPUT_NAME = "frames"
FRAME_OUTPUTS = {"seg": ("mask", "uint8"), "cls": ("probabilities", "float32")}
FRAME_CHANNELS = (1, 3)
# A frame side the in-graph preprocessing keeps exact (the partial sums of its resize passes stay below 2**24).
MAX_FRAME_SIDE = 8192
REQUIRED_KEYS = ("format", "format_version", "backend", "precision", "batch", "inputs", "outputs", "model",
                 "preprocessing", "package_sha256", "files", "artifact", "tools")


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an artifact accepts (`min..max`) and the one it is tuned for (`opt`)."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        """`"MIN,OPT,MAX"` (or one number N for N,N,N) → a checked range."""
        try:
            values = [int(part) for part in str(text).split(",")]
        except ValueError:
            raise BackendError(f"--batch must be MIN,OPT,MAX integers (e.g. 1,4,16), got {text!r}") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise BackendError(f"--batch must be MIN,OPT,MAX (three integers), got {text!r}")
        batch = cls(*values)
        batch.validate()
        return batch

    def validate(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max <= MAX_BATCH:
            raise BackendError(f"batch range must satisfy 1 <= MIN <= OPT <= MAX <= {MAX_BATCH}, got "
                               f"{self.min},{self.opt},{self.max} (the cap keeps every tensor of the exported graph "
                               f"under 2**31 elements)")

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class FrameSpec:
    """The one frame geometry a frame artifact takes: `height`×`width` uint8 pixels, 1 (gray) or 3 (RGB) channels."""

    height: int
    width: int
    channels: int = 1

    @classmethod
    def parse(cls, text: str, channels: int = 1) -> "FrameSpec":
        """`"HxW"` (e.g. 1080x1920) → a checked spec."""
        parts = str(text).lower().split("x")
        try:
            height, width = (int(part) for part in parts)
        except ValueError:
            raise BackendError(f"--frame-size must be HxW (two integers, e.g. 1080x1920), got {text!r}") from None
        spec = cls(height, width, channels)
        spec.validate()
        return spec

    def validate(self) -> None:
        if not (1 <= self.height <= MAX_FRAME_SIDE and 1 <= self.width <= MAX_FRAME_SIDE):
            raise BackendError(f"frame size must be between 1x1 and {MAX_FRAME_SIDE}x{MAX_FRAME_SIDE}, got "
                               f"{self.height}x{self.width}")
        if self.channels not in FRAME_CHANNELS:
            raise BackendError(f"--channels must be one of {FRAME_CHANNELS} (gray or RGB), got {self.channels}")

    @property
    def shape(self) -> tuple:
        """The shape of one frame: `(H, W)` or `(H, W, 3)`."""
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, 3)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def io_spec(config, batch_dim: int = -1, frame: FrameSpec | None = None) -> tuple[list, list]:
    """Input and output tensor specs of the model of `config` (`-1` marks the dynamic batch dimension), of its frame
    artifact for `frame`."""
    if frame is not None:
        name, dtype = FRAME_OUTPUTS[config.task]
        out_shape = [batch_dim, frame.height, frame.width] if config.task == "seg" else [batch_dim, config.num_classes]
        return ([{"name": FRAME_INPUT_NAME, "dtype": "uint8", "shape": [batch_dim, *frame.shape]}],
                [{"name": name, "dtype": dtype, "shape": out_shape}])
    size = config.image_size
    inputs = [{"name": INPUT_NAME, "dtype": "float32", "shape": [batch_dim, 3, size, size]}]
    out_shape = [batch_dim, config.num_classes, size, size] if config.task == "seg" else [batch_dim, config.num_classes]
    outputs = [{"name": OUTPUT_NAME, "dtype": "float32", "shape": out_shape}]
    return inputs, outputs


def make_manifest(*, backend: str, precision: str, batch: BatchRange, config, package_sha256: str,
                  artifact: str, directory: Path, tools: dict, extra: dict | None = None,
                  frame: FrameSpec | None = None) -> dict:
    """A manifest for the files already written in `directory` (their sha256 are recorded); a frame artifact's
    records its frame geometry under `frame`."""
    inputs, outputs = io_spec(config, frame=frame)
    files = {path.name: file_sha256(path) for path in sorted(Path(directory).iterdir())
             if path.is_file() and path.name != MANIFEST}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "precision": precision,
        "batch": batch.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "model": {"arch": config.arch, "task": config.task, "classes": list(config.classes),
                  "image_size": config.image_size},
        "preprocessing": dict(config.preprocessing),
        "package_sha256": package_sha256,
        "files": files,
        "artifact": artifact,
        "tools": dict(tools),
    }
    if frame is not None:
        manifest["frame"] = frame.to_dict()
    manifest.update(extra or {})
    return manifest


def manifest_digest(manifest: dict) -> str:
    """sha256 of everything the manifest states but the digest itself (canonical JSON: sorted keys, no spaces)."""
    content = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Write `manifest.json` with the digest of its content, so no field of it can change unnoticed."""
    path = Path(directory) / MANIFEST
    sealed = {**manifest, "format_version": FORMAT_VERSION}
    sealed[DIGEST_KEY] = manifest_digest(sealed)
    path.write_text(json.dumps(sealed, indent=2, sort_keys=True) + "\n")
    return path


def is_artifact_directory(path: Path) -> bool:
    """Whether `path` holds an artifact this engine wrote (its manifest names our format): the only non-empty
    directory `ht-engine build --out` replaces."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
