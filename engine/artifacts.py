"""Built artifacts (a directory with `manifest.json`), as written by `ht-engine build`.

The manifest says what the artifact is (backend, precision, batch range, tensor names and shapes), what model it
came from (the package's sha256, task, classes, preprocessing) and which tools made it. It also records the
sha256 of every file of the artifact, so a corrupt or swapped file is refused on load instead of running.

This module imports no torch: the ONNX and TensorRT runtimes load artifacts where torch is absent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError, PackageError

MANIFEST = "manifest.json"
FORMAT = "ht-artifact"
FORMAT_VERSION = 1
ARTIFACT_BACKENDS = ("onnx", "tensorrt", "aoti")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
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
        if not 1 <= self.min <= self.opt <= self.max:
            raise BackendError(f"batch range must satisfy 1 <= MIN <= OPT <= MAX, got {self.min},{self.opt},{self.max}")

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass
class Artifact:
    """A verified artifact directory and its manifest; what artifact backends' `load` receives."""

    directory: Path
    manifest: dict
    # A temporary directory object whose lifetime the artifact's files share (artifacts built on the fly).
    keepalive: object = None

    @property
    def model_file(self) -> Path:
        return self.directory / self.manifest["artifact"]

    @property
    def batch(self) -> BatchRange:
        return BatchRange(**self.manifest["batch"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def io_spec(config, batch_dim: int = -1) -> tuple[list, list]:
    """Input and output tensor specs of the model of `config` (`-1` marks the dynamic batch dimension)."""
    size = config.image_size
    inputs = [{"name": INPUT_NAME, "dtype": "float32", "shape": [batch_dim, 3, size, size]}]
    out_shape = [batch_dim, config.num_classes, size, size] if config.task == "seg" else [batch_dim, config.num_classes]
    outputs = [{"name": OUTPUT_NAME, "dtype": "float32", "shape": out_shape}]
    return inputs, outputs


def make_manifest(*, backend: str, precision: str, batch: BatchRange, config, package_sha256: str,
                  artifact: str, directory: Path, tools: dict, extra: dict | None = None) -> dict:
    """A manifest for the files already written in `directory` (their sha256 are recorded)."""
    inputs, outputs = io_spec(config)
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
    manifest.update(extra or {})
    return manifest


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: Path) -> dict:
    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{directory} is a directory without {MANIFEST}: not a built artifact "
                           f"(build one with `ht-engine build M.htpkg --backend B --out DIR`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PackageError(f"{manifest_path} is not a JSON object")
    return manifest


def verify_manifest(directory: Path, manifest: dict, *, check_files: bool = True) -> None:
    """Refuse a manifest of another format/version, an unknown backend, or files that are missing or altered."""
    directory = Path(directory)
    if manifest.get("format") != FORMAT:
        raise PackageError(f"{directory / MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{directory / MANIFEST} has format version {manifest.get('format_version')!r}; "
                           f"this engine reads version {FORMAT_VERSION} (rebuild the artifact with this engine)")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise PackageError(f"{directory / MANIFEST} lacks the keys {missing}")
    if manifest["backend"] not in ARTIFACT_BACKENDS:
        raise PackageError(f"{directory / MANIFEST} names backend {manifest['backend']!r}; artifacts are built for "
                           f"{ARTIFACT_BACKENDS}")
    if manifest["artifact"] not in manifest["files"]:
        raise PackageError(f"{directory / MANIFEST}: its model file {manifest['artifact']!r} is not among its files")
    try:
        BatchRange(**manifest["batch"]).validate()
    except (TypeError, BackendError) as exc:
        raise PackageError(f"{directory / MANIFEST} has an invalid batch range {manifest['batch']!r}: {exc}") from exc
    if not check_files:
        return
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise PackageError(f"artifact {directory} is incomplete: {name} is listed in {MANIFEST} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise PackageError(f"artifact file {path} is altered or corrupt: sha256 {actual[:16]}… does not match "
                               f"the manifest's {expected[:16]}…")


def open_artifact(directory: Path) -> Artifact:
    """Read and verify an artifact directory."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_manifest(directory, manifest)
    return Artifact(directory, manifest)


def resolve_backend(manifest: dict, backend: str, precision: str, directory: Path) -> str:
    """The backend that runs this artifact. `reference` (the default of `Predictor.load`) means 'the artifact's
    own'; any other name must match the manifest, and so must a precision other than the default fp32."""
    built = manifest["backend"]
    if backend not in ("reference", built):
        raise PackageError(f"{directory} is a {built!r} artifact; it cannot run on backend {backend!r} "
                           f"(load it with backend={built!r}, or build a {backend!r} artifact from the package)")
    if precision not in ("fp32", manifest["precision"]):
        raise PackageError(f"{directory} was built for precision {manifest['precision']!r}, not {precision!r}; "
                           f"build another artifact for {precision!r}")
    return built


def load_artifact_predictor(predictor_cls, directory: Path, *, backend: str, device: str, precision: str):
    from .backends import backend_module, backend_status

    artifact = open_artifact(directory)
    manifest = artifact.manifest
    name = resolve_backend(manifest, backend, precision, Path(directory))
    module = backend_module(name)
    usable, reason = backend_status(name, device)
    if not usable:
        raise BackendError(f"backend {name!r} cannot run on {device!r}: {reason}")
    runner = module.load(artifact, device, manifest["precision"])
    model = manifest["model"]
    return predictor_cls(runner, task=model["task"], classes=model["classes"], preprocessing=manifest["preprocessing"],
                         image_size=model["image_size"], backend=name, source=Path(directory),
                         sha256=manifest["package_sha256"])
