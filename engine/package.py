"""The `.htpkg` package: one safetensors file, tensors + `{"format","version","config"}` metadata.

The metadata records a sha256 of the tensors (every tensor's name, dtype, shape and bytes, in name order), a sha256
of the config text exactly as stored, and the package sha256 that combines both; all are checked on load, so an
altered or truncated package (tensors or config) is refused instead of silently producing other numbers or
labels. Torch is imported when a package is read or written, not when this module is.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig
from .errors import ConfigError, PackageError
from .fileio import atomic_write

FORMAT = "htpkg"
VERSION = 2
# Version 1 packages (written before the hash covered the config) still load, their config unverified.
LEGACY_VERSIONS = (1,)
REWRITE_HINT = "rewrite it with `ht-engine upgrade {path} --out NEW.htpkg` to have its config verified too"


class UnverifiedConfigWarning(UserWarning):
    """A package or artifact of an older format: its tensors/files are verified, its config/manifest is not."""


def tensors_sha256(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package_sha256(tensors_sha: str, config_sha: str) -> str:
    """The package's identity: one sha256 over the tensors' and the stored config text's hashes."""
    return hashlib.sha256(f"htpkg-v{VERSION}|tensors:{tensors_sha}|config:{config_sha}".encode()).hexdigest()


def save_package(path, config: ModelConfig, tensors: dict) -> str:
    """Write a package atomically; returns its sha256 (covering the tensors and the config)."""
    from safetensors.torch import save_file

    config.validate()
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    config_text = config.to_json()
    tensors_sha, config_sha = tensors_sha256(tensors), text_sha256(config_text)
    sha = package_sha256(tensors_sha, config_sha)
    metadata = {"format": FORMAT, "version": str(VERSION), "config": config_text, "tensors_sha256": tensors_sha,
                "config_sha256": config_sha, "sha256": sha}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return sha


def read_package(path) -> tuple[ModelConfig, dict, str]:
    """Load and verify a package: `(config, tensors, sha256)`; `PackageError` on anything not intact."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PackageError(f"package {path} does not exist" if not path.exists() else
                           f"package {path} is not a file (expected a .htpkg package file)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises several types for truncated/garbled headers and data
        raise PackageError(f"package {path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise PackageError(f"{path} is not an HT package: metadata format is {metadata.get('format')!r}, "
                           f"expected {FORMAT!r}")
    version = metadata.get("version")
    if version == str(VERSION):
        return _read_current(path, metadata, tensors)
    if version in {str(v) for v in LEGACY_VERSIONS}:
        return _read_legacy(path, metadata, tensors)
    raise PackageError(f"{path} has package version {version!r}; this engine reads {VERSION} "
                       f"(and {', '.join(map(str, LEGACY_VERSIONS))})")


def _parse_config(path: Path, raw: dict) -> ModelConfig:
    try:
        return ModelConfig.from_dict(raw)
    except (TypeError, ConfigError) as exc:
        raise PackageError(f"package {path} has an invalid config: {exc}") from exc


def _read_current(path: Path, metadata: dict, tensors: dict) -> tuple[ModelConfig, dict, str]:
    missing = [key for key in ("config", "tensors_sha256", "config_sha256", "sha256") if key not in metadata]
    if missing:
        raise PackageError(f"package {path} lacks the metadata {missing}: not written by this engine, or damaged")
    config_text = metadata["config"]
    altered = []
    tensors_sha, config_sha = tensors_sha256(tensors), text_sha256(config_text)
    for part, actual, key in (("tensors", tensors_sha, "tensors_sha256"), ("config", config_sha, "config_sha256")):
        if actual != metadata[key]:
            altered.append(f"its {part} changed (sha256 {actual[:16]}…, recorded {metadata[key][:16]}…)")
    sha = package_sha256(metadata["tensors_sha256"], metadata["config_sha256"])
    if not altered and sha != metadata["sha256"]:
        altered.append("its recorded hashes do not combine to its sha256")
    if altered:
        raise PackageError(f"package {path} is altered or corrupt: {'; '.join(altered)}; rebuild or re-import it")
    try:
        raw = json.loads(config_text)
    except json.JSONDecodeError as exc:
        raise PackageError(f"package {path} has a config that is not JSON: {exc}") from exc
    return _parse_config(path, raw), tensors, sha


def _read_legacy(path: Path, metadata: dict, tensors: dict) -> tuple[ModelConfig, dict, str]:
    """Version 1: the recorded sha256 (inside the config) covers the tensors only."""
    try:
        raw = json.loads(metadata["config"])
        expected_sha = raw.pop("sha256")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise PackageError(f"package {path} has an invalid config: {exc!r}") from exc
    actual_sha = tensors_sha256(tensors)
    if actual_sha != expected_sha:
        raise PackageError(f"package {path} is altered or corrupt: tensor sha256 {actual_sha[:16]}… does not match "
                           f"the recorded {expected_sha[:16]}…")
    config = _parse_config(path, raw)
    warnings.warn(f"package {path} is of version 1: its tensors are verified but its config is not; "
                  + REWRITE_HINT.format(path=path), UnverifiedConfigWarning, stacklevel=3)
    return config, tensors, actual_sha


@dataclass
class LoadedPackage:
    """A verified package: config, tensors, its sha256 (tensors and config) and where it came from."""

    config: ModelConfig
    tensors: dict
    sha256: str
    path: Path


def load_package(path) -> LoadedPackage:
    """Read and verify the package at `path` (`PackageError` on anything not intact)."""
    config, tensors, sha = read_package(path)
    return LoadedPackage(config, tensors, sha, Path(path))
