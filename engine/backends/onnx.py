"""`onnx`: an ONNX artifact on ONNX Runtime, numpy in and out. Imports no torch.

The session's thread pool is the engine's budget (`engine.threads.onnxruntime_session_options`: intra-op threads,
one inter-op thread, sequential execution, no spin-waiting).

On `cuda[:N]` it uses ONNX Runtime's TensorRT and CUDA execution providers where the installed build has them, and
the runner offers `run_split` for the bench's host/device split (`_BoundRun`: IO binding with the input in a device
OrtValue).
"""

from __future__ import annotations

import time

import numpy as np

from ..artifacts import Artifact
from ..errors import BackendError
from ..export.manifest import FRAME_INPUT_NAME, INPUT_NAME
from ..export.onnx_export import ARTIFACT_PRECISIONS
from ..runner import Runner
from ..threads import onnxruntime_session_options

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


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
    chosen = [(name, dict(options)) for name in GPU_PROVIDERS if name in installed]
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


class _BoundRun:
    """`run` split into its three phases: the batch is copied into a device OrtValue (allocated once per shape and
    bound as the input), the session runs with IO binding (the first output bound on the device; ONNX Runtime
    allocates it on the first run of a shape and reuses it after), and that output is copied back to the host.
    Returns `(output, (h2d_ms, compute_ms, d2h_ms))`.

    ONNX Runtime runs on a stream of its own that its Python API does not expose, so CUDA events cannot bracket its
    work; instead every phase ends in a synchronization (the copy in with `synchronize_inputs`, the run with
    `synchronize_outputs`, the copy out is synchronous) and the host clock (`perf_counter_ns`, `clock`) is read
    between them. Each phase then holds its device work and the host calls that enqueue it: `compute_ms` includes
    ONNX Runtime's dispatch of the run, an upper bound of the device's compute time."""

    def __init__(self, onnxruntime, session, output_name: str, device_type: str, device_id: int,
                 clock=time.perf_counter_ns):
        self.onnxruntime, self.session, self.clock = onnxruntime, session, clock
        self.output_name, self.device_type, self.device_id = output_name, device_type, device_id
        self.binding = session.io_binding()
        self.device_input = None

    def __call__(self, batch: np.ndarray) -> tuple:
        clock, binding = self.clock, self.binding
        start = clock()
        host_in = np.ascontiguousarray(batch)
        if self.device_input is None or list(self.device_input.shape()) != list(host_in.shape):
            self.device_input = self.onnxruntime.OrtValue.ortvalue_from_shape_and_type(
                host_in.shape, host_in.dtype, self.device_type, self.device_id)
            binding.bind_ortvalue_input(INPUT_NAME, self.device_input)
            binding.clear_binding_outputs()  # the output kept from the last shape would not fit this one
            binding.bind_output(self.output_name, self.device_type, self.device_id)
        self.device_input.update_inplace(host_in)
        binding.synchronize_inputs()
        copied = clock()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        computed = clock()
        (output,) = binding.copy_outputs_to_cpu()
        done = clock()
        return output, ((copied - start) / 1e6, (computed - copied) / 1e6, (done - computed) / 1e6)


def load(source: Artifact, device: str, precision: str) -> Runner:
    import onnxruntime

    if source.manifest["precision"] not in ARTIFACT_PRECISIONS:
        raise BackendError(f"ONNX artifacts run in {ARTIFACT_PRECISIONS}, this one is {source.manifest['precision']!r}")
    options = onnxruntime_session_options()
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
    run_split = None
    if device.startswith("cuda") and any(name in GPU_PROVIDERS for name in session.get_providers()):
        run_split = _BoundRun(onnxruntime, session, output_names[0], "cuda", _device_index(device))
    return Runner(run=run, uses_torch=False, device=device, precision=precision, max_batch=max_batch,
                  run_split=run_split, split_timer=None if run_split is None else "perf_counter_ns")
