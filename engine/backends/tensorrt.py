"""`tensorrt`: a serialized TensorRT engine, numpy in and out. Imports no torch.

CUDA memory and the stream come from `cuda-python` (`cuda.bindings.runtime`); tensors are bound by name
(`set_input_shape` / `set_tensor_address`) and run with `execute_async_v3` on the runner's own stream, in the
pattern of TensorRT's own samples: device buffers allocated once (grown on demand), async copy in → execute → async
copy out → one synchronization. An engine built for another GPU, compute capability or TensorRT version is refused
before deserialization.

`run_timed` is the same run with CUDA events recorded on that stream around each of the three phases (trtexec's
H2D, GPU Compute and D2H), for the bench's host/device split; `run` records none, and the events are created on the
first timed run only.
"""

from __future__ import annotations

import numpy as np

from ..artifacts import Artifact
from ..errors import BackendError
from ..export.tensorrt import check_engine_compatible, engine_identity
from ..export.tensorrt_device import (
    check_cuda,
    cuda_device_identity,
    cudart,
    device_index,
    device_status,
    import_tensorrt,
)
from ..runner import Runner

available = device_status


class _Engine:
    """One deserialized engine with its execution context, stream, device buffers (grown on demand) and, once a run
    was timed, that run's phase events."""

    def __init__(self, trt, cudart, plan: bytes, index: int):
        self.trt, self.cudart = trt, cudart
        check_cuda(cudart.cudaSetDevice(index))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialize the engine (corrupt plan or incompatible build)")
        self.context = self.engine.create_execution_context()
        self.stream = check_cuda(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.buffers = {}
        self.events = None

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                check_cuda(self.cudart.cudaFree(pointer))
            pointer = check_cuda(self.cudart.cudaMalloc(nbytes))
            self.buffers[name] = (pointer, nbytes)
        return int(pointer)

    def _bind(self, batch: np.ndarray) -> tuple:
        """The host input (cast to the input binding's dtype: float32, or uint8 frames) and, per output, its name and
        an empty host array; every tensor's shape and device address set on the context."""
        trt = self.trt
        (name,) = self.inputs
        host_in = np.ascontiguousarray(batch, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
        self.context.set_input_shape(name, host_in.shape)
        self.context.set_tensor_address(name, self._buffer(name, host_in.nbytes))
        results = []
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            host_out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(out)))
            self.context.set_tensor_address(out, self._buffer(out, host_out.nbytes))
            results.append((out, host_out))
        return host_in, results

    def _copy_in(self, host_in: np.ndarray) -> None:
        (name,) = self.inputs
        check_cuda(self.cudart.cudaMemcpyAsync(self.buffers[name][0], host_in.ctypes.data, host_in.nbytes,
                                               self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT execution failed (see its log above)")

    def _copy_out(self, results: list) -> None:
        for out, host_out in results:
            check_cuda(self.cudart.cudaMemcpyAsync(host_out.ctypes.data, self.buffers[out][0], host_out.nbytes,
                                                   self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One batch in, the first output out in its binding's dtype."""
        host_in, results = self._bind(batch)
        self._copy_in(host_in)
        self._execute()
        self._copy_out(results)
        check_cuda(self.cudart.cudaStreamSynchronize(self.stream))
        return results[0][1]

    def run_timed(self, batch: np.ndarray) -> tuple:
        """`run`, and the device time of its three phases: `(output, (h2d_ms, compute_ms, d2h_ms))`."""
        if self.events is None:
            self.events = _PhaseEvents(self.cudart)
        events = self.events
        host_in, results = self._bind(batch)
        events.around("h2d", self.stream, lambda: self._copy_in(host_in))
        events.around("compute", self.stream, self._execute)
        events.around("d2h", self.stream, lambda: self._copy_out(results))
        check_cuda(self.cudart.cudaStreamSynchronize(self.stream))
        return results[0][1], events.elapsed_ms()


class _PhaseEvents:
    """A start and an end CUDA event per phase of a run (trtexec's H2D, GPU Compute, D2H), created once and recorded
    again on every timed run. The phases are timed on the device's clock between their own two events, so host work
    between phases (binding, Python) is in no phase."""

    PHASES = ("h2d", "compute", "d2h")

    def __init__(self, cudart):
        self.cudart = cudart
        self.events = {phase: (check_cuda(cudart.cudaEventCreate()), check_cuda(cudart.cudaEventCreate()))
                       for phase in self.PHASES}

    def around(self, phase: str, stream, enqueue) -> None:
        start, end = self.events[phase]
        check_cuda(self.cudart.cudaEventRecord(start, stream))
        enqueue()
        check_cuda(self.cudart.cudaEventRecord(end, stream))

    def elapsed_ms(self) -> tuple:
        """Milliseconds of each phase, in order; valid once the stream they were recorded on is synchronized."""
        return tuple(float(check_cuda(self.cudart.cudaEventElapsedTime(*self.events[phase])))
                     for phase in self.PHASES)

def load(source: Artifact, device: str, precision: str) -> Runner:
    trt = import_tensorrt()
    cuda = cudart()
    index = device_index(device)
    check_cuda(cuda.cudaSetDevice(index))
    here = {**cuda_device_identity(index), "tensorrt_version": trt.__version__}
    check_engine_compatible(engine_identity(source.manifest), here)
    engine = _Engine(trt, cuda, source.model_file.read_bytes(), index)
    precision, max_batch = source.manifest["precision"], source.batch.max
    frame = source.frame
    if frame is not None:
        def run_frames(frames: list) -> np.ndarray:
            check_cuda(cuda.cudaSetDevice(index))
            return engine.run(np.stack(frames))

        run_frames.artifact = source
        return Runner(run=None, uses_torch=False, device=device, precision=precision, max_batch=max_batch,
                      run_frames=run_frames, frame_shape=frame.shape)

    def run(batch: np.ndarray) -> np.ndarray:
        check_cuda(cuda.cudaSetDevice(index))
        return engine.run(batch).astype(np.float32, copy=False)

    def run_split(batch: np.ndarray) -> tuple:
        check_cuda(cuda.cudaSetDevice(index))
        output, phases = engine.run_timed(batch)
        return output.astype(np.float32, copy=False), phases

    run.artifact = source
    return Runner(run=run, uses_torch=False, device=device, precision=precision, max_batch=max_batch,
                  run_split=run_split, split_timer="cuda_events")
