"""Holoscan operators over the engine: a frame source, the model, and a sink that feeds the stream sinks.

Ports carry tensors where other Holoscan operators (HoloViz, format converters, recorders) could take them:
`frame` is a TensorMap `{"frame": uint8 [H,W] or [H,W,3]}`, the model's `tensor` output a TensorMap
`{"mask": uint8 [H,W]}` (segmentation) or `{"probabilities": float32 [C]}` (classification). Python-side metadata
(frame index, timestamp, arrival time) travels on `info`, the per-frame `FrameResult` on `result`.

A frame in device memory (an upstream GPU operator's) goes to the model without a host copy only where the predictor's
frame path takes device frames (`Predictor.takes_device_frames`: the optimized backend on CUDA); the route is chosen
per frame by `takes_device_path`, from the predictor's capability and the tensor's own DLPack / CUDA array interface,
so a CPU predictor never takes it and nothing here touches CUDA on a machine without one.
"""

from __future__ import annotations

import time

import numpy as np
from holoscan.core import Operator, OperatorSpec

from ..errors import InputError
from ..stream import Frame, StreamResult, open_source

# dlpack.h `DLDeviceType`: only plain CUDA device memory takes the device path (host, pinned and managed memory, and
# other devices, take the host path).
DLPACK_CUDA = 2


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

    A host tensor is read through its array interface (no copy). A device tensor (an upstream GPU operator's) goes
    straight to `Predictor.infer_device_frames` where the predictor takes device frames (`takes_device_path`): a torch
    view of its memory, after torch's stream waits for the upstream's CUDA stream; the mask stays on the device, and
    `device_output=True` emits it from there on `tensor` (for GPU operators downstream), while the `result`'s
    `FrameResult` holds its host copy. Elsewhere a device tensor is copied to the host with CuPy and `predict` uploads
    it again (`device_output` then changes nothing)."""

    def __init__(self, fragment, *args, predictor, info_port: bool = True, device_output: bool = False, **kwargs):
        self.predictor = predictor
        self.info_port = info_port
        self.device_output = device_output
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
        frame = tensors["frame"]
        if takes_device_path(self.predictor, frame):
            stream = op_input.receive_cuda_stream("frame", allocate=False)  # the upstream's stream, 0 if none
            output, pixels, result = infer_device_frame(self.predictor, frame, info["index"], self.device_output,
                                                        stream)
        else:
            output, pixels, result = infer_host_frame(self.predictor, frame, info["index"])
        self.frames += 1
        op_output.emit({"mask" if result.mask is not None else "probabilities": output}, "tensor")
        op_output.emit((info, pixels, result), "result")


def is_device_array(tensor) -> bool:
    """Whether `tensor` is in CUDA device memory: its DLPack device says so (`__dlpack_device__()` of type kDLCUDA),
    or, without DLPack, it has the CUDA array interface and no host one. Reads attributes only: no CUDA call."""
    if hasattr(tensor, "__dlpack_device__"):
        return int(tensor.__dlpack_device__()[0]) == DLPACK_CUDA
    return hasattr(tensor, "__cuda_array_interface__") and not hasattr(tensor, "__array_interface__")


def takes_device_path(predictor, tensor) -> bool:
    """A frame takes the device path when the predictor takes device frames and the frame is a device array."""
    return bool(getattr(predictor, "takes_device_frames", False)) and is_device_array(tensor)


def device_frame(tensor):
    """A device array as a torch tensor over the same memory, no copy: through DLPack where it has it, else through
    its `__cuda_array_interface__`."""
    import torch

    if hasattr(tensor, "__dlpack__"):
        return torch.from_dlpack(tensor)
    return torch.as_tensor(tensor)


def infer_device_frame(predictor, tensor, index: int, device_output: bool = False, stream: int = 0):
    """The device path of one frame → `(the tensor port's array, the frame's pixels, FrameResult)`: torch's current
    stream waits for `stream` (the upstream's CUDA stream; 0: none), the frame runs through
    `Predictor.infer_device_frames`, and the mask (or probabilities) stays on the device, emitted from there with
    `device_output`; the `FrameResult` holds its host copy (the one device-to-host copy, of the output only)."""
    import torch

    frame = device_frame(tensor)
    if stream:
        torch.cuda.current_stream(frame.device).wait_stream(torch.cuda.ExternalStream(stream, device=frame.device))
    outputs = predictor.infer_device_frames(frame[None])
    result = predictor.results(outputs.cpu().numpy(), [tuple(frame.shape[:2])], index)[0]
    return (outputs[0] if device_output else _port_array(result)), frame, result


def infer_host_frame(predictor, tensor, index: int):
    """The host path of one frame → `(the tensor port's array, the frame's pixels, FrameResult)`: `predict` on the
    host pixels (a device tensor copied to the host first)."""
    pixels = _host_array(tensor)
    result = predictor.predict([pixels], batch_size=1)[0]
    result.index = index
    return _port_array(result), pixels, result


def _port_array(result) -> np.ndarray:
    return result.mask if result.mask is not None else result.probabilities


def _host_array(tensor) -> np.ndarray:
    if hasattr(tensor, "__array_interface__") or not hasattr(tensor, "__cuda_array_interface__"):
        return np.asarray(tensor)
    import cupy

    return cupy.asnumpy(cupy.asarray(tensor))


class ResultSinkOp(Operator):
    """The recorder: every result to our stream sinks (`engine.stream`: `OverlayVideoSink`, `PngMaskSink`,
    `JsonLinesSink`, `DicomSegSink`, `CollectSink`...) as a `StreamResult`, in frame order. Also checks that the
    `tensor` port carries the result's own mask or probabilities. Frames and outputs that arrive in device memory
    (`HTInferenceOp`'s device path) are copied to the host here, where host sinks need them: the frame only when
    there is a sink."""

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
        if not np.array_equal(_host_array(next(iter(tensors.values()))), _port_array(result)):
            raise InputError(f"ResultSinkOp: frame {info['index']}: the tensor port and the result disagree")
        if self.sinks:
            pixels = _host_array(pixels)
        latency = time.perf_counter() - info["arrival"]
        item = StreamResult(Frame(info["index"], info["timestamp"], pixels), result, latency)
        for sink in self.sinks:
            sink.write(item)

    def stop(self) -> None:
        for sink in self.sinks:
            sink.close()
