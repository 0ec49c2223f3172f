"""Built artifacts (a directory with `manifest.json`), as written by `ht-engine build`."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PackageError

MANIFEST = "manifest.json"


def read_manifest(directory: Path) -> dict:
    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{directory} is a directory without {MANIFEST}: not a built artifact")
    try:
        return json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{manifest_path} is not valid JSON: {exc}") from exc


def load_artifact_predictor(predictor_cls, directory: Path, *, backend: str, device: str, precision: str):
    manifest = read_manifest(directory)
    raise PackageError(f"{directory} is a {manifest.get('backend', 'unknown')!r} artifact; this engine version "
                       f"cannot load built artifacts yet (load the .htpkg package instead)")
