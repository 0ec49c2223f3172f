"""`onnx`: an ONNX artifact on ONNX Runtime, numpy in and out. Imports no torch.

On `cuda[:N]` it uses ONNX Runtime's TensorRT and CUDA execution providers where the installed build has them.
"""

from __future__ import annotations

import numpy as np

from ..artifacts import Artifact
from ..errors import BackendError
from ..export.manifest import FRAME_INPUT_NAME, INPUT_NAME
from ..export.onnx_export import ARTIFACT_PRECISIONS
from ..runner import Runner


def _device_index(device: str) -> int:
    if device == "cuda":
        return 0
    try:
        return int(device.split(":", 1)[1])
    except (IndexError, ValueError):
        raise BackendError(f"invalid device {device!r}; expected 'cpu' or 'cuda[:N]'") from None


def providers_for(device: str) -> list:
    import onnxruntime

    installed = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise BackendError(f"device {device!r} is not supported; expected 'cpu' or 'cuda[:N]'")
    options = {"device_id": _device_index(device)}
    chosen = [(name, dict(options)) for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
              if name in installed]
    if not chosen:
        raise BackendError(f"onnxruntime {onnxruntime.__version__} has no CUDA execution provider "
                           f"(it has {installed}); install onnxruntime-gpu to run ONNX artifacts on {device}")
    return chosen + ["CPUExecutionProvider"]


def available(device: str) -> tuple[bool, str]:
    try:
        providers_for(device)
    except ImportError:
        return False, "onnxruntime is not installed (pip install 'ht-engine[runtime]')"
    except BackendError as exc:
        return False, str(exc)
    return True, ""


def load(source: Artifact, device: str, precision: str) -> Runner:
    import onnxruntime

    if source.manifest["precision"] not in ARTIFACT_PRECISIONS:
        raise BackendError(f"ONNX artifacts run in {ARTIFACT_PRECISIONS}, this one is {source.manifest['precision']!r}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(source.model_file), options, providers=providers_for(device))
    output_names = [output["name"] for output in source.manifest["outputs"]]
    precision, max_batch = source.manifest["precision"], source.batch.max
    frame = source.frame
    if frame is not None:
        def run_frames(frames: list) -> np.ndarray:
            return session.run(output_names, {FRAME_INPUT_NAME: np.stack(frames)})[0]

        run_frames.artifact = source
        return Runner(run=None, uses_torch=False, device=device, precision=precision, max_batch=max_batch,
                      run_frames=run_frames, frame_shape=frame.shape)

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(output_names, {INPUT_NAME: batch})[0]

    # Keeps a temporary artifact directory (built by `Predictor.load` from a package) alive as long as the runner.
    run.artifact = source
    return Runner(run=run, uses_torch=False, device=device, precision=precision, max_batch=max_batch)
