"""What `ht-engine serve` hands to Triton Inference Server: the model `ht` as a Python-backend model repository.

The served model takes raw frames (`frames`, uint8 `[n,H,W]` gray or `[n,H,W,3]` RGB, any size) and answers with
per-frame masks (`mask`, uint8 `[n,H,W]`) or probabilities (`probabilities`, float32 `[n,C]`): the frame path runs
inside the model, behind Triton's dynamic batcher. A frame artifact (`build --frame-size`) takes its one geometry
only, and the config says so with the same tensor blocks `export-triton` writes for it, so both describe the model
alike (names, types, dims, batching).

The model directory holds a small `model.py` that puts this engine's source first on the stub's `sys.path` (the
stub is started by the server, not by us) and hands every call to `engine.serve.backend_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServeError
from ..export.triton_repository import tensor_block
from ..version import __version__

MODEL_NAME = "ht"
INPUT_NAME = "frames"
OUTPUT_NAMES = {"seg": "mask", "cls": "probabilities"}
CHANNELS = (1, 3)

# The file the Python backend runs (`<model>/1/model.py`). It imports nothing of the engine until `initialize` has
# put the engine's own source root (a config parameter) first on sys.path.
MODEL_PY = '''"""ht-engine serve: the Triton Python-backend entry point of the served model (written by ht-engine)."""
import json
import locale
import sys


class TritonPythonModel:
    def initialize(self, args):
        # The stub starts its interpreter in the C locale: files opened without an encoding (torch.compile's
        # generated code among them) would be read as ASCII.
        for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
            try:
                locale.setlocale(locale.LC_CTYPE, name)
                break
            except locale.Error:
                continue
        root = json.loads(args["model_config"])["parameters"]["engine_root"]["string_value"]
        if root not in sys.path:
            sys.path.insert(0, root)
        from engine.serve.backend_model import BackendModel

        self.model = BackendModel(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
'''


@dataclass(frozen=True)
class ServedModel:
    """The model being served, read (and verified) once in the serving process before the server starts."""

    source: Path
    task: str
    classes: tuple
    package_sha256: str
    channels: int
    # The one frame geometry of a frame artifact ({"height", "width", "channels"}), or None: any frame size.
    frame: dict | None = None

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.task]

    def input_spec(self) -> dict:
        """`frames` as a manifest-style tensor spec (batch dimension first)."""
        if self.frame is not None:
            shape = [-1, self.frame["height"], self.frame["width"]]
        else:
            shape = [-1, -1, -1]
        return {"name": INPUT_NAME, "dtype": "uint8", "shape": shape + ([3] if self.channels == 3 else [])}

    def output_spec(self) -> dict:
        if self.task == "cls":
            return {"name": "probabilities", "dtype": "float32", "shape": [-1, len(self.classes)]}
        return {"name": "mask", "dtype": "uint8", "shape": self.input_spec()["shape"][:3]}


def describe(source: Path, channels: int | None = None) -> ServedModel:
    """Read the package or artifact at `source` (verifying it) into a `ServedModel`. `channels` (1 gray, 3 RGB) is
    the frame layout clients send; a frame artifact fixes it, otherwise it defaults to gray."""
    source = Path(source).resolve()
    if source.is_dir():
        from ..artifacts import open_artifact

        manifest = open_artifact(source).manifest
        model, frame = manifest["model"], manifest.get("frame")
        task, classes, sha = model["task"], model["classes"], manifest["package_sha256"]
        if frame is not None:
            if channels is not None and channels != frame["channels"]:
                raise ServeError(f"{source} is a frame artifact built for {frame['channels']}-channel frames; "
                                 f"--channels {channels} does not match (leave it out)")
            channels = frame["channels"]
    elif source.is_file():
        from ..package import read_package

        config, _, sha = read_package(source)
        task, classes, frame = config.task, config.classes, None
    else:
        raise ServeError(f"{source} does not exist: expected a .htpkg package or a built artifact directory")
    channels = 1 if channels is None else channels
    if channels not in CHANNELS:
        raise ServeError(f"--channels must be 1 (gray frames [n,H,W]) or 3 (RGB frames [n,H,W,3]), got {channels}")
    return ServedModel(source, task, tuple(classes), sha, channels, frame)


@dataclass(frozen=True)
class Batching:
    """How Triton feeds the model: the largest batch, and the dynamic batcher (None: every request alone)."""

    max_batch: int = 8
    max_queue_delay_us: int | None = 500
    instances: int = 1

    def validate(self) -> None:
        if not 1 <= self.max_batch <= 8192:
            raise ServeError(f"--max-batch must be between 1 and 8192, got {self.max_batch}")
        if self.max_queue_delay_us is not None and not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ServeError(f"--max-queue-delay-us must be between 0 and 10000000, got {self.max_queue_delay_us}")
        if not 1 <= self.instances <= 64:
            raise ServeError(f"--instances must be between 1 and 64, got {self.instances}")


def _parameter(key: str, value: str) -> str:
    return f'  {{\n    key: "{key}"\n    value: {{ string_value: {json.dumps(value)} }}\n  }}'


def config_pbtxt(model: ServedModel, batching: Batching, runtime: dict, engine_root: Path) -> str:
    """The `config.pbtxt` of the served model. `runtime` is how each instance loads it ({"backend", "device",
    "precision"}); the model's metadata (task, classes, package sha256, engine version) rides along as parameters
    (`GET /v2/models/ht/config` shows them)."""
    batching.validate()
    parameters = {"engine_root": str(engine_root), "source": str(model.source), "task": model.task,
                  "classes": json.dumps(list(model.classes)), "package_sha256": model.package_sha256,
                  "engine_version": __version__, "channels": str(model.channels),
                  **{key: "" if value is None else str(value) for key, value in runtime.items()}}
    batcher = "" if batching.max_queue_delay_us is None else (
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {batching.max_queue_delay_us}\n}}\n")
    return (
        f'name: "{MODEL_NAME}"\n'
        f'backend: "python"\n'
        f"max_batch_size: {batching.max_batch}\n"
        f"input [\n{tensor_block(model.input_spec())}\n]\n"
        f"output [\n{tensor_block(model.output_spec())}\n]\n"
        f"{batcher}"
        f"instance_group [\n  {{\n    count: {batching.instances}\n    kind: KIND_CPU\n  }}\n]\n"
        f"parameters [\n{','.join(_parameter(k, v) for k, v in parameters.items())}\n]\n"
    )


def write_repository(directory: Path, model: ServedModel, batching: Batching, runtime: dict,
                     engine_root: Path) -> Path:
    """Write the model repository under `directory` (a fresh folder of the server's workspace); returns it."""
    repository = directory / "models"
    version = repository / MODEL_NAME / "1"
    version.mkdir(parents=True)
    (repository / MODEL_NAME / "config.pbtxt").write_text(config_pbtxt(model, batching, runtime, engine_root))
    (version / "model.py").write_text(MODEL_PY)
    return repository
