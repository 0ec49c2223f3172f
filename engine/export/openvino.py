"""OpenVINO IR artifacts (`model.xml` + `model.bin`), converted from the exported ONNX graph.

The IR comes from the same ONNX file the `onnx` artifact ships (`export_onnx_file`: the deployable model with every
exact rewrite, the graph whose ops and accuracy the ONNX tests already pin) through `openvino.convert_model`, not
from OpenVINO's PyTorch frontend: one exported graph for both runtimes, and int8 reuses the calibrated Q/DQ graph of
`engine.export.quantize` (OpenVINO's CPU plugin runs Q/DQ MatMul/Conv as int8 kernels), so int8 needs neither NNCF
(which pulls scipy, scikit-learn, networkx, ninja) nor torch at run time.

Precisions: the IR always stores fp32 weights (`compress_to_fp16=False`, or fp32 would not be exact); bf16 is
OpenVINO's `INFERENCE_PRECISION_HINT` at compile time, which only CPUs with bf16 units (AVX-512 BF16 or AMX) honour,
so the runtime refuses bf16 where the CPU lacks them instead of silently running f32.

int8 on a CPU with bf16 units runs its float parts in bf16 (`inference_precision`), and there the two roundings add
up: with only the embedding and block 0 in float (the ONNX/TensorRT default, whose float parts run in f32) the masks
fell below those of the bf16 artifact. So an OpenVINO int8 artifact keeps the first `INT8_FLOAT_BLOCKS` blocks in
float and marks the adapters' projections (`adapter_projections`: the two 64-wide halves of W1, W2) `precise`, the
IR's runtime attribute that keeps a node in f32 under a bf16 hint. Measured on the seeded ViT-B/16 seg model (2-core
Xeon with AMX, 2 threads, batch 1; 13 synthetic frames, masks against eager fp32, 2026-12-02), median ms and masks
(the bench's frame / mean of 13):
- bf16 artifact 33.8 ms, 0.9904 / 0.9905;
- int8, block 0 float, all float parts bf16: 26.3 ms, 0.9877 / 0.9888;
- int8, blocks 0-1 float, adapter projections f32: 28.4 ms, 0.9914 / 0.9911.
Where the bf16 error comes from, measured by rounding to bf16 in the eager model one kind of op at a time (13 frames,
mean masks): the adapters' projections 0.9939, the head's linears 0.9950, the adapters' convolutions 0.9961, the
backbone's GEMMs 0.9974, the residual stream 0.9975: the adapters' few FLOPs carry the most error. Keeping the whole
adapter in f32 costs 6 ms (reorders around every op); the projections alone cost 0.6 ms.

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
# Blocks (from the embedding) whose GEMMs stay float in an OpenVINO int8 artifact (module docstring).
INT8_FLOAT_BLOCKS = 2
# The IR's runtime attribute that keeps a node in its original precision under a lower inference precision hint.
PRECISE = {"name": "precise", "version": "0"}


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
    ViT-B/16 seg, batch 1, each against OpenVINO's bf16 on the reference model in the same run (masks 98.97% of the
    eager fp32 ones): bf16 float parts (the adapters' projections f32) 27.6 ms against 42.8, masks 99.14%
    (`benchmarks/results/ht-engine-bench-cpu.md`); f32 43.9 ms against 40.3, 99.71% (`ht-engine-bench-cpu-int8-f32.md`)."""
    if recorded != "auto":
        return recorded
    return "bf16" if cpu_bf16 and int8_float() == "auto" else "f32"


def check_openvino_precision(precision: str) -> None:
    if precision not in OPENVINO_PRECISIONS:
        raise BackendError(f"backend 'openvino' builds precisions {OPENVINO_PRECISIONS}, got {precision!r}")


def _move_bias(matmul, ops) -> list:
    """`(x·W + b) + y` → `(x·W + y) + b` after `matmul`, where its output has exactly that form (`b` a constant);
    returns the new nodes' names. The CPU plugin folds a constant bias into a new FullyConnected node, which drops the
    `precise` mark; a sum that is not constant is fused as a post-op of the marked node instead."""
    users = list(matmul.output(0).get_target_inputs())
    if len(users) != 1 or users[0].get_node().get_type_name() != "Add":
        return []
    add = users[0].get_node()
    bias = add.input_value(1 - users[0].get_index())
    after = list(add.output(0).get_target_inputs())
    if bias.get_node().get_type_name() != "Constant" or len(after) != 1 or after[0].get_node().get_type_name() != "Add":
        return []
    outer = after[0].get_node()
    name = matmul.get_friendly_name()
    total = ops.add(matmul.output(0), outer.input_value(1 - after[0].get_index()), name=f"{name}/f32_sum")
    biased = ops.add(total, bias, name=f"{name}/f32_bias")
    outer.output(0).replace(biased.output(0))
    return [total.get_friendly_name(), biased.get_friendly_name()]


def adapter_projections(model, width: int, bottleneck: int) -> list:
    """Rewrite `model` (an `openvino.Model`) so that its adapters' projections can stay f32 under a bf16 hint; returns
    the names of the nodes to mark `precise`: every MatMul by a constant `bottleneck`×`width` weight (a float one: an
    int8 GEMM's weight is a FakeQuantize) and the bias sums `_move_bias` makes after it."""
    import openvino.opset13 as ops

    if bottleneck >= width:
        return []
    names = []
    for node in model.get_ordered_ops():
        weight = node.input_value(1) if node.get_type_name() == "MatMul" else None
        if weight is None or weight.get_node().get_type_name() != "Constant":
            continue
        if sorted(weight.get_partial_shape().to_shape()) != sorted((width, bottleneck)):
            continue
        names.append(node.get_friendly_name())
        names.extend(_move_bias(node, ops))
    return names


def mark_precise(xml_path: Path, names: list) -> None:
    """Add the `precise` runtime attribute to the layers of the IR at `xml_path` named `names` (the Python API cannot
    make it: it is a typed attribute the IR reader builds from `<attribute name="precise" version="0"/>`)."""
    import xml.etree.ElementTree as ElementTree

    if not names:
        return
    tree = ElementTree.parse(xml_path)
    wanted, found = set(names), set()
    for layer in tree.getroot().iter("layer"):
        name = layer.get("name")
        if name not in wanted:
            continue
        if name in found:
            raise BackendError(f"OpenVINO IR {xml_path.name}: two layers are named {name!r}; cannot mark one f32")
        found.add(name)
        info = layer.find("rt_info")
        if info is None:
            info = ElementTree.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, info)
        if not any(attribute.get("name") == PRECISE["name"] for attribute in info):
            ElementTree.SubElement(info, "attribute", PRECISE)
    if found != wanted:
        raise BackendError(f"OpenVINO IR {xml_path.name} has no layers {sorted(wanted - found)} to mark f32")
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)


def build_openvino(package, precision: str, batch, directory: Path, progress, stage, device: str):
    """Write `model.xml`/`model.bin` for `package` into `directory`; returns (file name, extra manifest fields)."""
    import openvino

    from .build import export_onnx_file

    check_openvino_precision(precision)
    directory = Path(directory)
    onnx_path = directory / "model.onnx"
    # bf16 is a compile-time hint: the IR of a bf16 artifact is the fp32 graph.
    export_onnx_file(package, "int8" if precision == "int8" else "fp32", batch, onnx_path, progress,
                     float_blocks=INT8_FLOAT_BLOCKS)
    cfg = package.config
    with stage(progress, f"converting to OpenVINO IR (openvino {openvino.__version__})"):
        model = openvino.convert_model(str(onnx_path))
        size = cfg.image_size
        model.reshape({INPUT_NAME: openvino.PartialShape([openvino.Dimension(batch.min, batch.max), 3, size, size])})
        precise = adapter_projections(model, cfg.width, cfg.bottleneck) if precision == "int8" else []
        openvino.save_model(model, str(directory / MODEL_XML), compress_to_fp16=False)
        mark_precise(directory / MODEL_XML, precise)
    onnx_path.unlink()
    if precision == "bf16" and not cpu_has_bf16():
        progress("  note: this CPU has no bf16 units (AVX-512 BF16 or AMX); the artifact runs in bf16 only on one that "
                 "has, and is refused elsewhere")
    extra = {"openvino": {"version": openvino.__version__, "inference_precision_hint": INFERENCE_PRECISION[precision],
                          "device": device, "weights": MODEL_BIN, "source": "onnx"}}
    if precision == "int8":
        extra["openvino"].update(float_blocks=INT8_FLOAT_BLOCKS, precise_nodes=len(precise))
    return MODEL_XML, extra
