"""Backend registry. Each backend module exposes `available(device) -> (bool, reason)` and
`load(source, device, precision) -> Runner`. Modules are imported lazily: loading the registry imports no torch."""

from __future__ import annotations

import importlib

from ..errors import BackendError

BACKEND_MODULES = {
    "reference": "engine.backends.reference",
    "optimized": "engine.backends.optimized",
    "onnx": "engine.backends.onnx",
    "aoti": "engine.backends.aoti",
    "tensorrt": "engine.backends.tensorrt",
    "openvino": "engine.backends.openvino",
}


def backend_module(name: str):
    if name not in BACKEND_MODULES:
        raise BackendError(f"unknown backend {name!r}; this engine has: {', '.join(BACKEND_MODULES)}")
    return importlib.import_module(BACKEND_MODULES[name])


def backend_status(name: str, device: str) -> tuple[bool, str]:
    try:
        return backend_module(name).available(device)
    except ImportError as exc:
        return False, f"{name} needs a package that is not installed: {exc}"


def available_backends(device: str = "cpu") -> list[str]:
    """Names of the backends that can run on `device` ("cpu", "cuda", "cuda:N") right now."""
    return [name for name in BACKEND_MODULES if backend_status(name, device)[0]]
