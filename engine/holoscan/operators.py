"""Holoscan operators over the engine: a frame source, the model, and a sink that feeds the stream sinks.

Ports carry tensors where other Holoscan operators (HoloViz, format converters, recorders) could take them:
`frame` is a TensorMap `{"frame": uint8 [H,W] or [H,W,3]}`, the model's `tensor` output a TensorMap
`{"mask": uint8 [H,W]}` (segmentation) or `{"probabilities": float32 [C]}` (classification). Python-side metadata
(frame index, timestamp, arrival time) travels on `info`, the per-frame `FrameResult` on `result`.
"""

from __future__ import annotations

import time

import numpy as np
from holoscan.core import Operator, OperatorSpec

from ..errors import InputError
from ..stream import Frame, StreamResult, open_source


class FrameSourceOp(Operator):
    """Every frame of one of our sources (`engine.stream.open_source`: video, DICOM, image folder, array, live
    callable, or a `Source` such as a `CaptureSource`), one per compute call; the application stops when the source
    ends."""

    def __init__(self, fragment, *args, source, fps: float | None = None, realtime: bool = False, **kwargs):
        self.spec_source = source
        self.fps = fps
        self.realtime = realtime
        self.frames = None
        self.emitted = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("frame")
        spec.output("info")

    def start(self) -> None:
        self.source = open_source(self.spec_source, fps=self.fps, realtime=self.realtime)
        self.frames = iter(self.source)

    def compute(self, op_input, op_output, context) -> None:
        frame = next(self.frames, None)
        if frame is None:
            self.stop_execution()
            return
        op_output.emit({"frame": frame.pixels}, "frame")
        op_output.emit({"index": frame.index, "timestamp": frame.timestamp, "arrival": time.perf_counter()}, "info")
        self.emitted += 1

    def stop(self) -> None:
        if self.frames is not None:
            self.source.close()


class HTInferenceOp(Operator):
    """`Predictor.predict` on each frame tensor: in `frame` (TensorMap with a uint8 frame) and `info`; out `tensor`
    (the mask or probabilities, as a TensorMap) and `result` (`(info, FrameResult)`).

    `info_port=False` leaves out the `info` input, for an upstream that sends frame tensors only (Holoscan's
    `V4L2VideoCaptureOp` through a `FormatConverterOp`): frames are then numbered here in arrival order, stamped with
    their arrival time (seconds since the first frame).

    A host tensor is read through its array interface (no copy). A device tensor (an upstream GPU operator's) is
    copied to the host with CuPy, because `Predictor.predict` takes host frames: the runner uploads it again
    (docs/holoscan.md says what that costs and what is left to do)."""

    def __init__(self, fragment, *args, predictor, info_port: bool = True, **kwargs):
        self.predictor = predictor
        self.info_port = info_port
        self.frames = 0
        self.first_arrival = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("frame")
        if self.info_port:
            spec.input("info")
        spec.output("tensor")
        spec.output("result")

    def _arrival_info(self) -> dict:
        now = time.perf_counter()
        self.first_arrival = now if self.first_arrival is None else self.first_arrival
        return {"index": self.frames, "timestamp": now - self.first_arrival, "arrival": now}

    def compute(self, op_input, op_output, context) -> None:
        tensors = op_input.receive("frame")
        info = op_input.receive("info") if self.info_port else self._arrival_info()
        if "frame" not in tensors:
            raise InputError(f"HTInferenceOp: the frame TensorMap has no 'frame' tensor (got {sorted(tensors)}); a "
                             f"FormatConverterOp upstream names it with out_tensor_name='frame'")
        pixels = _host_array(tensors["frame"])
        result = self.predictor.predict([pixels], batch_size=1)[0]
        result.index = info["index"]
        self.frames += 1
        if result.mask is not None:
            op_output.emit({"mask": result.mask}, "tensor")
        else:
            op_output.emit({"probabilities": result.probabilities}, "tensor")
        op_output.emit((info, pixels, result), "result")


def _host_array(tensor) -> np.ndarray:
    if hasattr(tensor, "__array_interface__") or not hasattr(tensor, "__cuda_array_interface__"):
        return np.asarray(tensor)
    import cupy

    return cupy.asnumpy(cupy.asarray(tensor))


class ResultSinkOp(Operator):
    """The recorder: every result to our stream sinks (`engine.stream`: `OverlayVideoSink`, `PngMaskSink`,
    `JsonLinesSink`, `DicomSegSink`, `CollectSink`...) as a `StreamResult`, in frame order. Also checks that the
    `tensor` port carries the result's own mask or probabilities."""

    def __init__(self, fragment, *args, sinks, info: dict, **kwargs):
        self.sinks = list(sinks)
        self.sink_info = info
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("tensor")
        spec.input("result")

    def start(self) -> None:
        for sink in self.sinks:
            sink.open(self.sink_info)

    def compute(self, op_input, op_output, context) -> None:
        tensors = op_input.receive("tensor")
        info, pixels, result = op_input.receive("result")
        expected = result.mask if result.mask is not None else result.probabilities
        if not np.array_equal(np.asarray(next(iter(tensors.values()))), expected):
            raise InputError(f"ResultSinkOp: frame {info['index']}: the tensor port and the result disagree")
        latency = time.perf_counter() - info["arrival"]
        item = StreamResult(Frame(info["index"], info["timestamp"], pixels), result, latency)
        for sink in self.sinks:
            sink.write(item)

    def stop(self) -> None:
        for sink in self.sinks:
            sink.close()
