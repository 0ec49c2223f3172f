"""int8 ONNX graphs with explicit quantization (QuantizeLinear/DequantizeLinear pairs), as TensorRT 11 requires
and TensorRT 10 and ONNX Runtime accept.

Weights are quantized per output channel and activations per tensor, both symmetric (zero points 0: TensorRT's
parser takes no other; biases stay float), for the inputs of MatMul, Gemm and Conv only: LayerNorm, softmax, GELU and the residual
adds stay in float. Activation ranges are calibrated (min/max) on synthetic ultrasound frames run through the
package's own preprocessing, so no patient data is needed to build.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .manifest import INPUT_NAME

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_FRAMES = 16


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


def quantize_int8(fp32_path: Path, out_path: Path, preprocessing: dict) -> Path:
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
    quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=CalibrationMethod.MinMax,
                    # int32 bias Q/DQ would be the default; TensorRT dequantizes int8/fp8 only, so biases stay float.
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return Path(out_path)
