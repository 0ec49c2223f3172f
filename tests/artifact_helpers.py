"""Small packages for artifact tests (image size matched by the package's preprocessing)."""

from __future__ import annotations

from engine.artifacts import open_artifact
from engine.config import AUTHORS_PREPROCESSING
from engine.export.build import build_artifact
from engine.export.manifest import BatchRange
from engine.model import build_reference_model
from engine.package import save_package
from tests.helpers import small_config, small_tensors


def small_package(path, arch: str, task: str, filter_kind: str = "channel", size: int = 96, seed: int = 3):
    """Write a small seeded package to `path`; returns the reference model of the same tensors."""
    cfg = small_config(arch, task, filter_kind, image_size=size, preprocessing=dict(AUTHORS_PREPROCESSING, size=size))
    tensors = small_tensors(cfg, seed=seed)
    save_package(path, cfg, tensors)
    return build_reference_model(cfg, tensors)


def build_artifacts(workdir, packages: dict, backend: str, builds: list, batch: BatchRange = BatchRange(1, 2, 8)) -> dict:
    """`{(name, precision): opened artifact}` for each `(name, precision)` of `builds`, built from `packages[name][0]`
    into `workdir/<name>-<precision>`."""
    return {(name, precision): open_artifact(build_artifact(packages[name][0], backend, precision, batch,
                                                            workdir / f"{name}-{precision}"))
            for name, precision in builds}
