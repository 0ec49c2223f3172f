"""Built artifacts (a directory with `manifest.json`, written by `ht-engine build`): read and verify them.

Everything an artifact states is checked before any of it runs: the manifest's format and version, its keys, and
the sha256 of every file it lists (`engine.export.manifest` writes them).

This module imports no torch: the ONNX and TensorRT runtimes load artifacts where torch is absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError, PackageError
from .export.manifest import ARTIFACT_BACKENDS, FORMAT, FORMAT_VERSION, MANIFEST, REQUIRED_KEYS, BatchRange, file_sha256


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
