"""The CPU anchor: OpenVINO on the eager reference model, as a CPU user would deploy the authors' model instead of
this engine (`openvino.convert_model` through OpenVINO's PyTorch frontend, TorchScript tracing; `torch.export` would
not do: OpenVINO 2026.4 has no conversion rule for `aten._fft_r2c/_fft_c2r` of the frequency filter).

A Predictor like `suite.compiled_reference`, so a bench can measure it beside the eager and compiled baselines. On a
CPU with bf16 units OpenVINO's default CPU inference precision is bf16, so f32 is asked for explicitly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..threads import openvino_config

OPENVINO_ANCHOR = "openvino-reference"
ANCHOR_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def convert_reference(package_path: Path):
    """`(package, converted)`: the package and OpenVINO's conversion of its eager reference model (dynamic batch),
    which every anchor precision compiles (the conversion is the slow part: trace, then convert)."""
    import openvino
    import torch

    from ..backends.reference import load_model
    from ..package import load_package

    package = load_package(package_path)
    cfg = package.config
    model = load_model(cfg, package.tensors).eval()
    example = torch.rand(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        converted = openvino.convert_model(model, example_input=example)
    converted.reshape({0: openvino.PartialShape([-1, 3, cfg.image_size, cfg.image_size])})
    return package, converted


def openvino_reference(package_path: Path, precision: str = "fp32", threads: int | None = None, conversion=None):
    """A Predictor over OpenVINO's conversion of the package's eager reference model (CPU, dynamic batch), its pool
    sized like the `openvino` backend's (`engine.threads.openvino_config`; `threads`: None for the budget).
    `conversion` is `convert_reference(package_path)` made once for several precisions (None: made here)."""
    import openvino

    from ..errors import BackendError
    from ..runner import Runner
    from ..runtime import Predictor

    if precision not in ANCHOR_PRECISIONS:
        raise BackendError(f"the OpenVINO anchor runs in {tuple(ANCHOR_PRECISIONS)}, got {precision!r}")
    package, converted = convert_reference(package_path) if conversion is None else conversion
    cfg = package.config
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": ANCHOR_PRECISIONS[precision],
              **openvino_config(threads)}
    request = openvino.Core().compile_model(converted, "CPU", config).create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    return Predictor(Runner(run=run, uses_torch=False, device="cpu", precision=precision), task=cfg.task,
                     classes=cfg.classes, preprocessing=cfg.preprocessing, image_size=cfg.image_size,
                     backend=OPENVINO_ANCHOR, source=Path(package_path), sha256=package.sha256)
