"""Built artifacts (a directory with `manifest.json`, written by `ht-engine build`): read and verify them.

Everything an artifact states is checked before any of it runs: the manifest's format and version, the digest of
its whole content (`manifest_sha256`: an edited field is refused), the type of every field, that every file it
names is a plain file inside the artifact directory, and the sha256 of every such file (`engine.export.manifest`
writes them).

This module imports no torch: the ONNX and TensorRT runtimes load artifacts where torch is absent.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .config import TASKS, check_type, validate_preprocessing
from .errors import BackendError, ConfigError, PackageError
from .export.manifest import (
    ARTIFACT_BACKENDS,
    DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    FRAME_INPUT_NAME,
    FRAME_OUTPUTS,
    LEGACY_FORMAT_VERSIONS,
    MANIFEST,
    REQUIRED_KEYS,
    BatchRange,
    FrameSpec,
    file_sha256,
    manifest_digest,
)
from .package import REWRITE_HINT, UnverifiedConfigWarning

SHA256 = re.compile(r"[0-9a-f]{64}")
# Artifact files are written flat into their directory: a name is one plain path component.
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TENSOR_SPEC = {"name": "string", "dtype": "string", "shape": ["integer"]}


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

    @property
    def frame(self) -> FrameSpec | None:
        """The frame geometry of a frame artifact (uint8 frames in, masks or probabilities out); None otherwise."""
        frame = self.manifest.get("frame")
        return None if frame is None else FrameSpec(**frame)


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
    """Refuse a manifest of another format/version, an altered or ill-typed field, a file name that leaves the
    artifact directory, or files that are missing or altered."""
    directory = Path(directory)
    where = directory / MANIFEST
    if manifest.get("format") != FORMAT:
        raise PackageError(f"{where} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        if manifest.get(DIGEST_KEY) != manifest_digest(manifest):
            raise PackageError(f"{where} was altered after it was written: its content does not match its "
                               f"{DIGEST_KEY} (every field it states is covered); rebuild the artifact")
    elif version in LEGACY_FORMAT_VERSIONS and not isinstance(version, bool):
        warnings.warn(f"artifact {directory} has manifest format version {version}: its files are verified but its "
                      f"manifest is not; " + REWRITE_HINT.format(path=directory).replace("NEW.htpkg", "NEW_DIR"),
                      UnverifiedConfigWarning, stacklevel=3)
    else:
        raise PackageError(f"{where} has format version {version!r}; this engine reads version {FORMAT_VERSION} "
                           f"(and {', '.join(map(str, LEGACY_FORMAT_VERSIONS))}; rebuild the artifact with this engine)")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise PackageError(f"{where} lacks the keys {missing}")
    try:
        _check_fields(manifest)
    except ConfigError as exc:
        raise PackageError(f"{where}: {exc}") from None
    if manifest["backend"] not in ARTIFACT_BACKENDS:
        raise PackageError(f"{where} names backend {manifest['backend']!r}; artifacts are built for "
                           f"{ARTIFACT_BACKENDS}")
    if manifest["artifact"] not in manifest["files"]:
        raise PackageError(f"{where}: its model file {manifest['artifact']!r} is not among its files")
    try:
        BatchRange(**manifest["batch"]).validate()
    except (TypeError, BackendError) as exc:
        raise PackageError(f"{where} has an invalid batch range {manifest['batch']!r}: {exc}") from exc
    paths = {name: _inside(directory, name) for name in manifest["files"]}
    if not check_files:
        return
    for name, expected in manifest["files"].items():
        path = paths[name]
        if not path.is_file():
            raise PackageError(f"artifact {directory} is incomplete: {name} is listed in {MANIFEST} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise PackageError(f"artifact file {path} is altered or corrupt: sha256 {actual[:16]}… does not match "
                               f"the manifest's {expected[:16]}…")


def _check_fields(manifest: dict) -> None:
    """The type of every field the engine reads (`ConfigError` naming the field)."""
    for key in ("backend", "precision", "artifact", "package_sha256"):
        check_type(key, manifest[key], "string")
    for key in ("batch", "model", "files", "tools"):
        check_type(key, manifest[key], dict)
    for key in ("min", "opt", "max"):
        check_type(f"batch.{key}", manifest["batch"].get(key), "integer")
    model = manifest["model"]
    for key, kind in (("arch", "string"), ("task", "string"), ("classes", ["string"]), ("image_size", "integer")):
        check_type(f"model.{key}", model.get(key), kind)
    if model["task"] not in TASKS:
        raise ConfigError(f"model.task must be one of {TASKS}, got {model['task']!r}")
    if not model["classes"] or model["image_size"] < 1:
        raise ConfigError(f"model must have classes and a positive image_size, got {model!r}")
    validate_preprocessing(manifest["preprocessing"])
    if manifest["preprocessing"]["size"] != model["image_size"]:
        raise ConfigError(f"preprocessing.size {manifest['preprocessing']['size']} differs from model.image_size "
                          f"{model['image_size']}")
    if not SHA256.fullmatch(manifest["package_sha256"]):
        raise ConfigError(f"package_sha256 must be a sha256 hex digest, got {manifest['package_sha256']!r}")
    for name, digest in manifest["files"].items():
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise ConfigError(f"files[{name!r}] must be a sha256 hex digest, got {digest!r}")
    for key in ("inputs", "outputs"):
        check_type(key, manifest[key], list)
        for index, spec in enumerate(manifest[key]):
            check_type(f"{key}[{index}]", spec, dict)
            for field, kind in _TENSOR_SPEC.items():
                check_type(f"{key}[{index}].{field}", spec.get(field), kind)
    if "frame" in manifest:
        _check_frame_fields(manifest)
        return
    size, classes = model["image_size"], len(model["classes"])
    expected = [-1, classes, size, size] if model["task"] == "seg" else [-1, classes]
    shapes = [spec["shape"] for spec in manifest["outputs"]]
    if manifest["outputs"] and shapes[0] != expected:
        raise ConfigError(f"outputs[0].shape {shapes[0]} does not fit a {model['task']} model with {classes} classes "
                          f"at {size}x{size} (expected {expected})")


def _check_frame_fields(manifest: dict) -> None:
    """A frame artifact's geometry, and its input and output specs that follow from it."""
    frame = manifest["frame"]
    check_type("frame", frame, dict)
    if sorted(frame) != ["channels", "height", "width"]:
        raise ConfigError(f"frame must have exactly the keys channels, height, width, got {sorted(frame)}")
    for key in ("height", "width", "channels"):
        check_type(f"frame.{key}", frame[key], "integer")
    spec = FrameSpec(**frame)
    try:
        spec.validate()
    except BackendError as exc:
        raise ConfigError(f"frame {frame!r}: {exc}") from None
    task, classes = manifest["model"]["task"], len(manifest["model"]["classes"])
    name, dtype = FRAME_OUTPUTS[task]
    expected = {"inputs": {"name": FRAME_INPUT_NAME, "dtype": "uint8", "shape": [-1, *spec.shape]},
                "outputs": {"name": name, "dtype": dtype,
                            "shape": [-1, spec.height, spec.width] if task == "seg" else [-1, classes]}}
    for key, wanted in expected.items():
        if len(manifest[key]) != 1 or manifest[key][0] != wanted:
            raise ConfigError(f"{key} {manifest[key]} does not fit a {task} frame artifact for frames "
                              f"{'x'.join(map(str, spec.shape))} (expected [{wanted}])")


def _inside(directory: Path, name: str) -> Path:
    """The path of artifact file `name`: a plain name of a regular file directly inside `directory`, never a path
    that leaves it (`..`, absolute, separators) or a symbolic link."""
    if not FILE_NAME.fullmatch(name):
        raise PackageError(f"{directory / MANIFEST} names the file {name!r}: artifact files are plain names inside "
                           f"the artifact directory (letters, digits, '_', '.', '-'; no paths)")
    path = directory / name
    if path.is_symlink():
        raise PackageError(f"artifact file {path} is a symbolic link; artifact files must be regular files inside "
                           f"{directory}")
    return path


def open_artifact(directory: Path) -> Artifact:
    """Read and verify an artifact directory."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_manifest(directory, manifest)
    return Artifact(directory, manifest)
