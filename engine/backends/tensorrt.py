"""`tensorrt`: a serialized TensorRT engine, numpy in and out. Imports no torch.

CUDA memory and the stream come from `cuda-python` (`cuda.bindings.runtime`); tensors are bound by name
(`set_input_shape` / `set_tensor_address`) and run with `execute_async_v3` on the runner's own stream. An engine
built for another GPU, compute capability or TensorRT version is refused before deserialization.
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
    """One deserialized engine with its execution context, stream and device buffers (grown on demand)."""

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

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                check_cuda(self.cudart.cudaFree(pointer))
            pointer = check_cuda(self.cudart.cudaMalloc(nbytes))
            self.buffers[name] = (pointer, nbytes)
        return int(pointer)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One batch in (cast to the input binding's dtype: float32, or uint8 frames), the first output out in its
        binding's dtype."""
        cudart, trt = self.cudart, self.trt
        (name,) = self.inputs
        host_in = np.ascontiguousarray(batch, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
        address = self._buffer(name, host_in.nbytes)
        self.context.set_input_shape(name, host_in.shape)
        self.context.set_tensor_address(name, address)
        check_cuda(cudart.cudaMemcpyAsync(address, host_in.ctypes.data, host_in.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        results = []
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            host_out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(out)))
            self.context.set_tensor_address(out, self._buffer(out, host_out.nbytes))
            results.append((out, host_out))
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT execution failed (see its log above)")
        for out, host_out in results:
            check_cuda(cudart.cudaMemcpyAsync(host_out.ctypes.data, self.buffers[out][0], host_out.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        check_cuda(cudart.cudaStreamSynchronize(self.stream))
        return results[0][1]


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

    run.artifact = source
    return Runner(run=run, uses_torch=False, device=device, precision=precision, max_batch=max_batch)
