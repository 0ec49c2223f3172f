"""Triton Inference Server model repositories (the serving system, not the Triton kernel language) from built
artifacts: `REPO/<name>/config.pbtxt`, `REPO/<name>/1/<model file>` and the artifact's manifest next to the config
for traceability.

Imports no torch: exporting works wherever the artifact can be read. The caller opens (and so verifies) the
artifact with `engine.artifacts.open_artifact`; this writer only reads what it states.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..errors import BackendError, OutputError
from ..fileio import staging_directory
from .manifest import MANIFEST

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}
INSTANCE_KINDS = ("gpu", "cpu")
# A model name is one directory of the repository: never ".", ".." or a path.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MODEL_WHAT = "a Triton model written by ht-engine export-triton (config.pbtxt and manifest.json)"


def is_triton_model(path: Path) -> bool:
    """Whether `path` is a model directory this engine wrote: the only non-empty one `export-triton` replaces."""
    return (path / "config.pbtxt").is_file() and (path / MANIFEST).is_file()


def default_model_name(manifest: dict) -> str:
    model = manifest["model"]
    return re.sub(r"[^A-Za-z0-9_]", "_", f"ht_{model['arch']}_{model['task']}_{manifest['precision']}")


def tensor_block(spec: dict) -> str:
    dims = ", ".join(str(d) for d in spec["shape"][1:])
    return f'  {{\n    name: "{spec["name"]}"\n    data_type: {TYPES[spec["dtype"]]}\n    dims: [ {dims} ]\n  }}'


def config_pbtxt(manifest: dict, name: str, instances: int = 1, kind: str = "gpu",
                 max_queue_delay_us: int = 500) -> str:
    """The text of `config.pbtxt` for an artifact's manifest (batch dimension implicit, as Triton wants)."""
    backend = manifest["backend"]
    if backend not in PLATFORMS:
        raise BackendError(f"Triton serves ONNX and TensorRT artifacts, not {backend!r} ones; build the package "
                           f"with --backend onnx or --backend tensorrt")
    if kind not in INSTANCE_KINDS:
        raise BackendError(f"instance kind must be one of {INSTANCE_KINDS}, got {kind!r}")
    if backend == "tensorrt" and kind == "cpu":
        raise BackendError("a TensorRT engine runs on a GPU only; use --kind gpu")
    if instances < 1:
        raise BackendError(f"--instances must be >= 1, got {instances}")
    batch = manifest["batch"]
    if batch["min"] != 1:
        raise BackendError(f"the artifact accepts batches {batch['min']}..{batch['max']}, but Triton's dynamic "
                           f"batcher sends any batch from 1 up: rebuild with --batch 1,{batch['opt']},{batch['max']}")
    platform, model_file = PLATFORMS[backend]
    preferred = sorted({batch["opt"], batch["max"]})
    inputs = ",\n".join(tensor_block(spec) for spec in manifest["inputs"])
    outputs = ",\n".join(tensor_block(spec) for spec in manifest["outputs"])
    return (
        f'name: "{name}"\n'
        f'platform: "{platform}"\n'
        f'default_model_filename: "{model_file}"\n'
        f"max_batch_size: {batch['max']}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_{kind.upper()}\n  }}\n]\n"
    )


def export_triton(artifact, repository: Path, name: str | None = None, instances: int = 1,
                  kind: str = "gpu") -> Path:
    """Write `artifact` (an opened `engine.artifacts.Artifact`) as model `name` of the Triton repository
    `repository`; returns the model directory. Only that model's directory is replaced, atomically; other models of
    the repository are left alone."""
    manifest = artifact.manifest
    name = default_model_name(manifest) if name is None else name
    if not MODEL_NAME.fullmatch(name):
        raise OutputError(f"Triton model name {name!r} must be a plain name: letters, digits, '_', '.', '-', starting "
                          f"with a letter, digit or '_' (no '.', '..' or path separators)")
    text = config_pbtxt(manifest, name, instances, kind)
    _, model_file = PLATFORMS[manifest["backend"]]
    target = Path(repository) / name
    with staging_directory(target, is_triton_model, MODEL_WHAT, "--name") as directory:
        (directory / "config.pbtxt").write_text(text)
        (directory / "1").mkdir()
        shutil.copyfile(artifact.model_file, directory / "1" / model_file)
        shutil.copyfile(artifact.directory / MANIFEST, directory / MANIFEST)
    return target
