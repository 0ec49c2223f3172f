"""int8 ONNX graphs with explicit quantization (QuantizeLinear/DequantizeLinear pairs), as TensorRT 11 requires
and TensorRT 10 and ONNX Runtime accept.

Weights are quantized per output channel and activations per tensor, both symmetric (zero points 0: TensorRT's
parser takes no other; biases stay float), for the backbone's GEMMs only: the MatMul/Gemm/Conv nodes with
a constant weight whose sides are both at least the model's width (qkv, attention projection, fc1, fc2), except in
the patch embedding and the first `FLOAT_BLOCKS` blocks. The rest stays in float: LayerNorm, softmax, GELU and the
residual adds, and also the adapters' small GEMMs, the attention products (activation × activation) and the
per-sample depthwise convolutions. Those are a few percent of the FLOPs but most of the error.

Measured on the seeded ViT-B/16 seg model (OpenVINO CPU, 6 unseen synthetic frames, relative logit error and mask
agreement with fp32; `engine/export/quantize.py` before and after, 2026-12-02):
- with one group quantized and the rest at bf16 (bf16 alone: 99.1%), the adapters' projections and per-sample
  convolutions gave 96.8-97.5% each, each kind of backbone GEMM 98.8-98.9%; with everything quantized (the rest
  f32) the error was 0.24 and the agreement 93.1%, with the backbone's GEMMs only 0.048 and 98.5%.
- the error enters early and grows through the later blocks: leaving the embedding and block 0 in float (4 of 41
  such GEMMs) brings it to 0.024 and 99.4% (block 0's fc2 alone matters most: 0.032), also the first two blocks 0.010
  and 99.7%; leaving the last two blocks in float changes nothing (0.038). Asymmetric (uint8) activations or
  percentile calibration gain 5-10% of the error at most, not worth TensorRT's refusal of zero points.
Activation ranges are calibrated (min/max) on synthetic ultrasound frames run through the package's own
preprocessing, so no patient data is needed to build.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

from .manifest import INPUT_NAME

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_FRAMES = 16
# Blocks whose GEMMs stay float (counted from the embedding): quantization error there grows through every later block.
FLOAT_BLOCKS = 1
# The module scope the ONNX exporter records per node (`pkg.torch.onnx.name_scopes`): `embed...` or `blocks.<i>...`,
# also under a wrapper's prefix (the frame graph's `model.`).
_SCOPE = re.compile(r"(?:^|\.)(?:(embed)|blocks\.(\d+))(?:\.|$)")


def calibration_batches(preprocessing: dict, frames: int = CALIBRATION_FRAMES, seed: int = 0) -> list:
    """Preprocessed single-frame batches of synthetic ultrasound frames of varied sizes."""
    import numpy as np

    from ..preprocess import preprocess_frames
    from ..synthetic import synthetic_frame

    rng = np.random.default_rng(seed)
    batches = []
    for index in range(frames):
        height, width = int(rng.integers(160, 480)), int(rng.integers(160, 640))
        frame, _ = synthetic_frame(height, width, seed=seed + index)
        batches.append(preprocess_frames([frame], preprocessing))
    return batches


def _early(node, float_blocks: int) -> bool:
    """Whether `node` belongs to the patch embedding or one of the first `float_blocks` blocks, by the module scope
    the exporter recorded (a node without one is not early)."""
    scopes = next((prop.value for prop in node.metadata_props if prop.key == "pkg.torch.onnx.name_scopes"), None)
    if not scopes:
        return False
    for scope in ast.literal_eval(scopes):
        match = _SCOPE.search(scope)
        if match:
            return match.group(1) is not None or int(match.group(2)) < float_blocks
    return False


def gemm_nodes(model, min_side: int, float_blocks: int = FLOAT_BLOCKS) -> tuple:
    """`(quantized, kept_float)` node names of the ONNX `model`: MatMul/Gemm/Conv nodes whose weight (an initializer
    or a Constant) has every side >= `min_side`, outside the embedding and the first `float_blocks` blocks, and the
    other MatMul/Gemm/Conv nodes."""
    shapes = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(attribute.t.dims)
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        sides = weight[:2] if node.op_type == "Conv" and weight else weight
        large = bool(sides) and len(sides) >= 2 and min(sides) >= min_side
        (quantized if large and not _early(node, float_blocks) else kept).append(node.name)
    return quantized, kept


def quantize_int8(fp32_path: Path, out_path: Path, preprocessing: dict, width: int,
                  float_blocks: int = FLOAT_BLOCKS) -> Path:
    """Calibrate and write the int8 Q/DQ graph of `fp32_path` (a model of width `width`) to `out_path`, the GEMMs of
    the embedding and the first `float_blocks` blocks left in float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_batches(preprocessing))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    _, kept_float = gemm_nodes(onnx.load(str(fp32_path), load_external_data=False), width, float_blocks)
    quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=kept_float,
                    # int32 bias Q/DQ would be the default; TensorRT dequantizes int8/fp8 only, so biases stay float.
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return Path(out_path)
