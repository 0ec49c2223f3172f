"""Stand-ins for TensorRT and cuda-python's runtime, as far as `engine.backends.tensorrt` uses them, so that the
runner's buffer, stream and event logic runs on a machine with neither.

Device memory is host memory (numpy buffers, addressed by their pointers), copies and the engine's kernel run at
once, and every stream keeps a simulated device clock that each operation enqueued on it advances by a fixed cost:
an event records its stream's clock, so the time between two events is exactly the cost of what was enqueued between
them on that stream. An event's time can be read only after its stream was synchronized (the real API answers
cudaErrorNotReady before), and the legacy default stream (0) runs nothing, so its clock never moves.
"""

from __future__ import annotations

import ctypes
import itertools
from types import SimpleNamespace

import numpy as np

from engine.artifacts import Artifact

MIB = 2**20
NOT_READY = 600  # cudaErrorNotReady
INVALID_HANDLE = 400  # cudaErrorInvalidResourceHandle
INPUT, OUTPUT = "images", "logits"
CLASSES = 2


def expected_output(batch: np.ndarray) -> np.ndarray:
    """What the fake engine computes: the first CLASSES channels, doubled, plus one."""
    return 2.0 * batch[:, :CLASSES] + 1.0


class FakeEvent:
    def __init__(self):
        self.stream = None
        self.at_ms = None
        self.synchronized = False


class FakeCudart:
    """`cuda.bindings.runtime`: status codes first in every result, as cuda-python returns them. `compute_ms` is the
    device time of the engine's kernel, cycled run after run."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = "H2D"
        cudaMemcpyDeviceToHost = "D2H"

    def __init__(self, h2d_ms_per_mib: float = 2.0, d2h_ms_per_mib: float = 0.5, compute_ms=(7.0,)):
        self.cost_per_mib = {"H2D": h2d_ms_per_mib, "D2H": d2h_ms_per_mib}
        self.compute_ms = itertools.cycle(compute_ms)
        self.clocks = {0: 0.0}
        self.memory = {}
        self.events = []
        self.log = []

    def cudaSetDevice(self, index):
        return (0,)

    def cudaStreamCreate(self):
        handle = max(self.clocks) + 1
        self.clocks[handle] = 0.0
        return (0, handle)

    def cudaMalloc(self, nbytes):
        buffer = np.zeros(nbytes, dtype=np.uint8)
        self.memory[buffer.ctypes.data] = buffer
        return (0, buffer.ctypes.data)

    def cudaFree(self, pointer):
        del self.memory[pointer]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        self.advance(stream, self.cost_per_mib[kind] * nbytes / MIB)
        self.log.append(f"copy {kind}")
        return (0,)

    def cudaStreamSynchronize(self, stream):
        for event in self.events:
            if event.stream == stream:
                event.synchronized = True
        self.log.append("sync")
        return (0,)

    def cudaEventCreate(self):
        event = FakeEvent()
        self.events.append(event)
        return (0, event)

    def cudaEventRecord(self, event, stream):
        event.stream, event.at_ms, event.synchronized = stream, self.clocks[stream], False
        self.log.append("record")
        return (0,)

    def cudaEventElapsedTime(self, start, end):
        if start.at_ms is None or end.at_ms is None:
            return (INVALID_HANDLE, 0.0)
        if not (start.synchronized and end.synchronized):
            return (NOT_READY, 0.0)
        return (0, end.at_ms - start.at_ms)

    def advance(self, stream, ms: float) -> None:
        if stream != 0:
            self.clocks[stream] += ms

    def device_array(self, address: int, shape: tuple, dtype) -> np.ndarray:
        """The buffer at `address` seen as an array (a view: writing it writes the fake device memory)."""
        count = int(np.prod(shape))
        return self.memory[address].view(dtype)[:count].reshape(shape)


class _Context:
    def __init__(self, cudart: FakeCudart, fail: bool):
        self.cudart, self.fail = cudart, fail
        self.shapes, self.addresses = {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def get_tensor_shape(self, name):
        batch, _, height, width = self.shapes[INPUT]
        return (batch, CLASSES, height, width)

    def execute_async_v3(self, stream):
        if self.fail:
            return False
        cudart = self.cudart
        images = cudart.device_array(self.addresses[INPUT], self.shapes[INPUT], np.float32)
        logits = cudart.device_array(self.addresses[OUTPUT], self.get_tensor_shape(OUTPUT), np.float32)
        logits[...] = expected_output(images)
        cudart.advance(stream, next(cudart.compute_ms))
        cudart.log.append("execute")
        return True


class FakeTensorRT:
    """The `tensorrt` module: every plan deserializes to one engine, input "images" float32 [B,3,H,W], output
    "logits" float32 [B,2,H,W] (`expected_output`); `fail=True` makes its execution report failure."""

    __version__ = "11.1.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    def __init__(self, cudart: FakeCudart, fail: bool = False):
        self.cudart, self.fail = cudart, fail

    @staticmethod
    def nptype(dtype):
        return np.dtype(dtype)

    def Runtime(self, logger):
        fake = self

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, index):
                return (INPUT, OUTPUT)[index]

            def get_tensor_mode(self, name):
                return FakeTensorRT.TensorIOMode.INPUT if name == INPUT else FakeTensorRT.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return "float32"

            def create_execution_context(self):
                return _Context(fake.cudart, fake.fail)

        return SimpleNamespace(deserialize_cuda_engine=lambda plan: Engine())


IDENTITY = {"gpu_name": "NVIDIA H200", "compute_capability": "9.0"}


def fake_artifact(directory, max_batch: int = 4) -> Artifact:
    """A TensorRT artifact built "on this machine" (its manifest names the fakes' GPU and TensorRT version)."""
    (directory / "model.plan").write_bytes(b"fake plan")
    manifest = {"artifact": "model.plan", "backend": "tensorrt", "precision": "fp16",
                "batch": {"min": 1, "opt": 2, "max": max_batch},
                "tensorrt": {**IDENTITY, "tensorrt_version": FakeTensorRT.__version__}}
    return Artifact(directory=directory, manifest=manifest)


def patch_tensorrt(monkeypatch, cudart: FakeCudart, trt: FakeTensorRT | None = None) -> None:
    """Make `engine.backends.tensorrt.load` find the fakes (TensorRT, cuda-python and the GPU's identity)."""
    from engine.backends import tensorrt

    trt = trt or FakeTensorRT(cudart)
    monkeypatch.setattr(tensorrt, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt, "cudart", lambda: cudart)
    monkeypatch.setattr(tensorrt, "cuda_device_identity", lambda index: dict(IDENTITY))
