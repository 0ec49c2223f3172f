"""OpenVINO IR artifacts (`model.xml` + `model.bin`), converted from the exported ONNX graph.

The IR comes from the same ONNX file the `onnx` artifact ships (`export_onnx_file`: the deployable model with every
exact rewrite, the graph whose ops and accuracy the ONNX tests already pin) through `openvino.convert_model`, not
from OpenVINO's PyTorch frontend: one exported graph for both runtimes, and int8 reuses the calibrated Q/DQ graph of
`engine.export.quantize` (OpenVINO's CPU plugin runs Q/DQ MatMul/Conv as int8 kernels), so int8 needs neither NNCF
(which pulls scipy, scikit-learn, networkx, ninja) nor torch at run time.

Precisions: the IR always stores fp32 weights (`compress_to_fp16=False`, or fp32 would not be exact); bf16 is
OpenVINO's `INFERENCE_PRECISION_HINT` at compile time, which only CPUs with bf16 units (AVX-512 BF16 or AMX) honour,
so the runtime refuses bf16 where the CPU lacks them instead of silently running f32.

This module imports no torch or openvino at import time: the runtime reads its precision table and CPU features.
"""

from __future__ import annotations

from pathlib import Path

from ..cpuinfo import CPUINFO, cpu_flags
from ..errors import BackendError
from .manifest import INPUT_NAME

OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
# The element type given to INFERENCE_PRECISION_HINT per artifact precision; int8's "auto" is decided where it runs
# (`inference_precision`): the float parts around its int8 GEMMs run in bf16 on a CPU with bf16 units, else f32.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "auto"}
MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"
# /proc/cpuinfo flags of the CPU units that matter for these precisions.
CPU_FEATURE_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_features(cpuinfo: Path = CPUINFO) -> dict:
    """Which of `CPU_FEATURE_FLAGS` this CPU has (all False where /proc/cpuinfo is unreadable)."""
    flags = cpu_flags(cpuinfo)
    return {flag: flag in flags for flag in CPU_FEATURE_FLAGS}


def cpu_has_bf16(features: dict | None = None) -> bool:
    features = cpu_features() if features is None else features
    return any(features[flag] for flag in BF16_FLAGS)


def inference_precision(recorded: str, cpu_bf16: bool, int8_float=lambda: "auto") -> str:
    """The INFERENCE_PRECISION_HINT to compile an artifact with, from the hint its manifest records (`recorded`):
    an element type ("f32", "bf16") as it is; "auto" (int8 artifacts) bf16 where the target is a CPU with bf16
    units (`cpu_bf16`) unless `int8_float()` (`HT_ENGINE_OPENVINO_INT8_FLOAT`, read only here) says "f32", else f32.
    int8 artifacts built before "auto" record "f32" and keep it. Measured on a 2-core Xeon with AMX, seeded
    ViT-B/16 seg, batch 1 (`benchmarks/results/ht-engine-bench-cpu.md` and `ht-engine-bench-cpu-int8-f32.md`): bf16
    float parts 25.9 ms, masks 98.77% of the eager fp32 ones; f32 43.5 ms, 99.37%; OpenVINO's bf16 on the reference
    model 44.0 ms, 98.97%."""
    if recorded != "auto":
        return recorded
    return "bf16" if cpu_bf16 and int8_float() == "auto" else "f32"


def check_openvino_precision(precision: str) -> None:
    if precision not in OPENVINO_PRECISIONS:
        raise BackendError(f"backend 'openvino' builds precisions {OPENVINO_PRECISIONS}, got {precision!r}")


def build_openvino(package, precision: str, batch, directory: Path, progress, stage, device: str):
    """Write `model.xml`/`model.bin` for `package` into `directory`; returns (file name, extra manifest fields)."""
    import openvino

    from .build import export_onnx_file

    check_openvino_precision(precision)
    directory = Path(directory)
    onnx_path = directory / "model.onnx"
    # bf16 is a compile-time hint: the IR of a bf16 artifact is the fp32 graph.
    export_onnx_file(package, "int8" if precision == "int8" else "fp32", batch, onnx_path, progress)
    with stage(progress, f"converting to OpenVINO IR (openvino {openvino.__version__})"):
        model = openvino.convert_model(str(onnx_path))
        size = package.config.image_size
        model.reshape({INPUT_NAME: openvino.PartialShape([openvino.Dimension(batch.min, batch.max), 3, size, size])})
        openvino.save_model(model, str(directory / MODEL_XML), compress_to_fp16=False)
    onnx_path.unlink()
    if precision == "bf16" and not cpu_has_bf16():
        progress("  note: this CPU has no bf16 units (AVX-512 BF16 or AMX); the artifact runs in bf16 only on one that "
                 "has, and is refused elsewhere")
    extra = {"openvino": {"version": openvino.__version__, "inference_precision_hint": INFERENCE_PRECISION[precision],
                          "device": device, "weights": MODEL_BIN, "source": "onnx"}}
    return MODEL_XML, extra
