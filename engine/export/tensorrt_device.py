"""TensorRT and cuda-python access shared by the engine builder (`export.tensorrt`) and the TensorRT runtime
(`backends.tensorrt`): their imports (with what to install when missing), CUDA status checks, and the identity of a
GPU (name, compute capability) that an engine is bound to. Imports neither package at import time, and no torch.
"""

from __future__ import annotations

from ..errors import BackendError


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


def device_status(device: str) -> tuple[bool, str]:
    """`(usable, why not)`: TensorRT and cuda-python importable and `device` a CUDA GPU this machine has."""
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
