"""The served model inside Triton's Python backend: one `Predictor` per model instance (one stub process each).

Requests reach `execute` in the batches Triton's dynamic batcher formed. Each request's `frames` (`[n,H,W]` or
`[n,H,W,3]` uint8) is checked on its own, requests of one frame geometry run as one `Predictor.predict` call, and
each request gets its own answer: its outputs, or an error that names what was wrong with it. A failing request
never fails its neighbours, and nothing a client sends takes the instance down.

Tensors cross the stub's boundary through DLPack (`np.from_dlpack`, `Tensor.from_dlpack`): the stub's pybind11
NumPy bridge (`as_numpy`, `Tensor(name, array)`) predates NumPy 2's array layout and reads NumPy 2 arrays wrongly
(seen here: garbage pixels in, empty tensors out), while DLPack is layout-independent. One wrinkle: the stub marks a
capsule it consumed "used_dlpack" where the DLPack protocol says "used_dltensor", so NumPy's capsule destructor
would take it for unconsumed and log a traceback per response; the capsule gets the protocol's name once the stub
holds the tensor (the stub frees the array through the tensor's deleter as before).
"""

from __future__ import annotations

import ctypes
import json

import numpy as np

from ..errors import HTError, InputError
from ..preprocess import check_frame
from .repository import INPUT_NAME

# A capsule keeps only the pointer to its name: this one lives as long as the process.
_CONSUMED = ctypes.c_char_p(b"used_dltensor")
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = (ctypes.py_object, ctypes.c_char_p)
_set_capsule_name.restype = ctypes.c_int


def output_tensor(pb_utils, name: str, array: np.ndarray):
    """`array` as the stub's output tensor `name`, handed over through DLPack."""
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _CONSUMED)
    return tensor


class FrameBatcher:
    """The model logic without Triton: one frames array per request in, per request its output or its error."""

    def __init__(self, predictor, channels: int, max_batch: int):
        self.predictor = predictor
        self.channels = channels
        self.max_batch = max_batch

    def check(self, frames: np.ndarray) -> np.ndarray:
        """A request's `frames`, or an `InputError` saying what is wrong with it."""
        rank = 3 if self.channels == 1 else 4
        layout = "[n,H,W]" if self.channels == 1 else "[n,H,W,3]"
        if frames.dtype != np.uint8:
            raise InputError(f"{INPUT_NAME} must be uint8 pixels, got {frames.dtype}")
        if frames.ndim != rank or (rank == 4 and frames.shape[3] != 3):
            raise InputError(f"{INPUT_NAME} must be {layout} frames, got shape {list(frames.shape)}")
        if frames.shape[0] == 0:
            raise InputError(f"{INPUT_NAME} holds no frames (shape {list(frames.shape)})")
        check_frame(frames[0])
        return frames

    def _outputs(self, frames: np.ndarray) -> np.ndarray:
        results = self.predictor.predict(list(frames), batch_size=self.max_batch)
        if self.predictor.task == "cls":
            return np.stack([r.probabilities for r in results]).astype(np.float32, copy=False)
        return np.stack([r.mask for r in results]).astype(np.uint8, copy=False)

    def run(self, requests: list) -> list:
        """`requests`: one frames array per request → one output array (or `HTError`) per request, in order."""
        outcomes: list = [None] * len(requests)
        groups: dict = {}
        for index, frames in enumerate(requests):
            try:
                frames = self.check(np.asarray(frames))
            except HTError as exc:
                outcomes[index] = exc
                continue
            groups.setdefault(frames.shape[1:], []).append((index, frames))
        for members in groups.values():
            try:
                outputs = self._outputs(np.concatenate([frames for _, frames in members]))
            except HTError:
                if len(members) == 1:
                    outcomes[members[0][0]] = self._alone(members[0][1])
                    continue
                for index, frames in members:  # find the request at fault; the others still get their answers
                    outcomes[index] = self._alone(frames)
                continue
            start = 0
            for index, frames in members:
                outcomes[index] = outputs[start:start + len(frames)]
                start += len(frames)
        return outcomes

    def _alone(self, frames: np.ndarray):
        try:
            return self._outputs(frames)
        except HTError as exc:
            return exc


class BackendModel:
    """What `model.py` delegates to: loads the predictor from the config's parameters and answers requests."""

    def __init__(self, args: dict):
        from ..runtime import Predictor

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.predictor = Predictor.load(parameters["source"], backend=parameters["backend"] or None,
                                        device=parameters["device"] or "cpu",
                                        precision=parameters["precision"] or "fp32")
        self.output_name = config["output"][0]["name"]
        self.batcher = FrameBatcher(self.predictor, int(parameters["channels"]), int(config["max_batch_size"]))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        frames = [np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT_NAME)) for request in requests]
        responses = []
        for outcome in self.batcher.run(frames):
            if isinstance(outcome, HTError):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(outcome))))
            else:
                tensor = output_tensor(pb_utils, self.output_name, outcome)
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        self.predictor = None
