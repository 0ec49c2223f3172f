"""`tensorrt`: a serialized TensorRT engine, numpy in and out. Imports no torch.

CUDA memory and the stream come from `cuda-python` (`cuda.bindings.runtime`); tensors are bound by name
(`set_input_shape` / `set_tensor_address`) and run with `execute_async_v3` on the runner's own stream. An engine
built for another GPU, compute capability or TensorRT version is refused before deserialization.
"""

from __future__ import annotations

import numpy as np

from ..artifacts import Artifact
from ..errors import BackendError
from ..runner import Runner


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(f"the TensorRT Python package is not installed ({exc}); install it from NVIDIA's "
                          f"package index (pip install tensorrt) on a machine with a CUDA GPU") from exc
    return tensorrt


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise ImportError(f"cuda-python is not installed ({exc}); pip install cuda-python") from exc
    return runtime


def check_cuda(result):
    """cuda-python returns `(err, *values)`; raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA runtime error {err}")
    return values[0] if len(values) == 1 else values


def device_index(device: str) -> int:
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendError(f"TensorRT runs on 'cuda[:N]' devices, got {device!r}")


def cuda_device_identity(index: int) -> dict:
    """GPU name and compute capability of CUDA device `index`."""
    props = check_cuda(cudart().cudaGetDeviceProperties(index))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu_name": name, "compute_capability": f"{props.major}.{props.minor}"}


def available(device: str) -> tuple[bool, str]:
    if not device.startswith("cuda"):
        return False, "TensorRT engines run on CUDA GPUs only"
    try:
        import_tensorrt()
        runtime = cudart()
    except ImportError as exc:
        return False, str(exc)
    try:
        index = device_index(device)
        count = check_cuda(runtime.cudaGetDeviceCount())
    except BackendError as exc:
        return False, f"no usable CUDA GPU: {exc}"
    if index >= count:
        return False, f"{device} requested but this machine has {count} CUDA GPU(s)"
    return True, ""


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
        return results[0][1].astype(np.float32, copy=False)


def load(source, device: str, precision: str) -> Runner:
    from ..export.tensorrt import check_engine_compatible, engine_identity

    if not isinstance(source, Artifact):
        from ..export.build import build_temporary_artifact

        source = build_temporary_artifact(source, "tensorrt", precision, device=device)
    trt = import_tensorrt()
    cuda = cudart()
    index = device_index(device)
    check_cuda(cuda.cudaSetDevice(index))
    here = {**cuda_device_identity(index), "tensorrt_version": trt.__version__}
    check_engine_compatible(engine_identity(source.manifest), here)
    engine = _Engine(trt, cuda, source.model_file.read_bytes(), index)

    def run(batch: np.ndarray) -> np.ndarray:
        check_cuda(cuda.cudaSetDevice(index))
        return engine.run(batch)

    run.artifact = source
    return Runner(run=run, uses_torch=False, device=device, precision=source.manifest["precision"],
                  max_batch=source.batch.max)
