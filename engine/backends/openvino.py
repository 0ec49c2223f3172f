"""`openvino`: an OpenVINO IR artifact on OpenVINO Runtime, numpy in and out. Imports no torch.

Devices: `cpu` → OpenVINO's CPU plugin, `gpu[:N]` → `GPU[.N]` (Intel GPUs), `npu` → `NPU`, each only where
`Core().available_devices` lists it. The model is compiled for latency (`PERFORMANCE_HINT=LATENCY`) with the
artifact's inference precision (`engine.export.openvino.inference_precision`: an int8 artifact's float parts in
bf16 on a CPU with bf16 units unless `HT_ENGINE_OPENVINO_INT8_FLOAT=f32`): once with its batch range (dynamic batch),
and once more with batch 1 fixed where the range holds 1, because a static shape lets the CPU plugin plan its kernels
for it (measured here, bf16 ViT-B seg: about 5% faster at batch 1; `benchmarks/bench_openvino.py`), at the price of a second compile at load and a second
copy of the compiled weights. On the CPU both are sized to the engine's thread budget
(`engine.threads.openvino_config`). One infer request per compiled model is reused for every call (under a lock: a
stream may call from several threads).
"""

from __future__ import annotations

import threading

import numpy as np

from .. import settings
from ..artifacts import Artifact
from ..errors import BackendError
from ..export.openvino import INFERENCE_PRECISION, OPENVINO_PRECISIONS, cpu_has_bf16, inference_precision
from ..runner import Runner
from ..threads import openvino_config

DEVICE_PREFIXES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}


def openvino_device(device: str) -> str:
    """The OpenVINO device name of an engine device name (`cpu`, `gpu`, `gpu:N`, `npu`)."""
    kind, _, index = device.partition(":")
    if kind not in DEVICE_PREFIXES or (index and (kind == "cpu" or not index.isdigit())):
        raise BackendError(f"backend 'openvino' runs on 'cpu', 'gpu[:N]' (Intel GPU) or 'npu', got {device!r}"
                           + ("; OpenVINO has no NVIDIA CUDA device (use backend 'onnx', 'tensorrt' or 'optimized')"
                              if kind == "cuda" else ""))
    return DEVICE_PREFIXES[kind] + (f".{index}" if index else "")


def _core():
    import openvino

    return openvino.Core()


def _check_device(core, device: str) -> str:
    name = openvino_device(device)
    present = core.available_devices
    # "GPU" (no index) is listed as "GPU" or "GPU.0", "GPU.1"… when there are several.
    if name not in present and not (name in ("GPU", "NPU") and any(d.startswith(name + ".") for d in present)):
        raise BackendError(f"OpenVINO has no device {name} here (it has {present}); device {device!r} needs "
                           f"the matching hardware and OpenVINO driver")
    return name


def available(device: str) -> tuple[bool, str]:
    try:
        _check_device(_core(), device)
    except ImportError:
        return False, "openvino is not installed (pip install 'ht-engine[openvino]')"
    except BackendError as exc:
        return False, str(exc)
    return True, ""


def check_precision_on(core, name: str, precision: str) -> None:
    """Refuse bf16 where the device has no bf16 units (OpenVINO would quietly run it in f32)."""
    if precision != "bf16":
        return
    if name == "CPU" and not cpu_has_bf16():
        raise BackendError("this CPU has no bf16 units (neither AVX-512 BF16 nor AMX in /proc/cpuinfo), so OpenVINO "
                           "would run the bf16 artifact in f32; build an fp32 or int8 artifact for it")
    if "BF16" not in core.get_property(name, "OPTIMIZATION_CAPABILITIES"):
        raise BackendError(f"OpenVINO device {name} does not list BF16 among its capabilities; build an fp32 or "
                           f"int8 artifact for it")


def load(source: Artifact, device: str, precision: str) -> Runner:
    built = source.manifest["precision"]
    if built not in OPENVINO_PRECISIONS:
        raise BackendError(f"OpenVINO artifacts run in {OPENVINO_PRECISIONS}, this one is {built!r}")
    core = _core()
    name = _check_device(core, device)
    check_precision_on(core, name, built)
    recorded = source.manifest.get("openvino", {}).get("inference_precision_hint", INFERENCE_PRECISION[built])
    hint = inference_precision(recorded, name == "CPU" and cpu_has_bf16(), settings.OPENVINO_INT8_FLOAT.get)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
              **(openvino_config() if name == "CPU" else {})}
    model = core.read_model(str(source.model_file))
    dynamic = core.compile_model(model, name, config).create_infer_request()
    single = None
    if source.batch.min <= 1:
        shape = list(model.inputs[0].get_partial_shape())
        model.reshape({model.inputs[0].get_any_name(): [1] + [dim.get_length() for dim in shape[1:]]})
        single = core.compile_model(model, name, config).create_infer_request()
    lock = threading.Lock()

    def run(batch: np.ndarray) -> np.ndarray:
        request = single if single is not None and len(batch) == 1 else dynamic
        with lock:
            request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            return request.get_output_tensor(0).data.copy()

    # Keeps a temporary artifact directory (built by `Predictor.load` from a package) alive as long as the runner.
    run.artifact = source
    return Runner(run=run, uses_torch=False, device=device, precision=built, max_batch=source.batch.max)
