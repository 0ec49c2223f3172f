"""The `.htpkg` package: one safetensors file, tensors + `{"format","version","config"}` metadata.

The config carries a sha256 over every tensor's name, dtype, shape and bytes (in name order), checked on load, so
that an altered or truncated package is refused instead of silently producing other numbers. Torch is imported
when a package is read or written, not when this module is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig
from .errors import ConfigError, PackageError
from .fileio import atomic_write

FORMAT = "htpkg"
VERSION = 1


def tensors_sha256(tensors: dict) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_package(path, config: ModelConfig, tensors: dict) -> str:
    """Write a package atomically; returns the tensor sha256 stored in its config."""
    from safetensors.torch import save_file

    config.validate()
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    sha = tensors_sha256(tensors)
    meta_config = json.loads(config.to_json())
    meta_config["sha256"] = sha
    metadata = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(meta_config, sort_keys=True)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return sha


def read_package(path) -> tuple[ModelConfig, dict, str]:
    """Load and verify a package: `(config, tensors, sha256)`; `PackageError` on anything not intact."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PackageError(f"package {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises several types for truncated/garbled headers and data
        raise PackageError(f"package {path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise PackageError(f"{path} is not an HT package: metadata format is {metadata.get('format')!r}, "
                           f"expected {FORMAT!r}")
    if metadata.get("version") != str(VERSION):
        raise PackageError(f"{path} has package version {metadata.get('version')!r}; this engine reads {VERSION}")
    try:
        raw = json.loads(metadata["config"])
        expected_sha = raw.pop("sha256")
        config = ModelConfig.from_dict(raw)
    except (KeyError, json.JSONDecodeError, TypeError, ConfigError) as exc:
        raise PackageError(f"package {path} has an invalid config: {exc}") from exc
    actual_sha = tensors_sha256(tensors)
    if actual_sha != expected_sha:
        raise PackageError(f"package {path} is altered or corrupt: tensor sha256 {actual_sha[:16]}… does not match "
                           f"the recorded {expected_sha[:16]}…")
    return config, tensors, actual_sha


@dataclass
class LoadedPackage:
    """A verified package: config, tensors, the sha256 of its tensors and where it came from."""

    config: ModelConfig
    tensors: dict
    sha256: str
    path: Path


def load_package(path) -> LoadedPackage:
    """Read and verify the package at `path` (`PackageError` on anything not intact)."""
    config, tensors, sha = read_package(path)
    return LoadedPackage(config, tensors, sha, Path(path))
