"""The model as operators of an NVIDIA Holoscan SDK application (the device makers' pipeline framework).

    from engine import Predictor
    from engine.holoscan import run_app

    report = run_app(Predictor.load("model.htpkg"), "cine.dcm", config="examples/holoscan/ht_ultrasound.yaml")

`FrameSourceOp` (our stream sources) → `HTInferenceOp` (uint8 frame tensor in; mask/probabilities tensor and the
per-frame result out) → `ResultSinkOp` (our stream sinks: overlay video, PNG masks, JSON lines, DICOM SEG), with
Holoscan's data-flow tracking on; `run_app` returns the report (frames, end-to-end latency percentiles from the
tracker, per-operator times). Needs the `[holoscan]` extra (`holoscan-cu13`); its Python operators also run on a
machine without a GPU.
"""

from .app import HTApplication, flow_report, run_app
from .operators import FrameSourceOp, HTInferenceOp, ResultSinkOp

__all__ = ["FrameSourceOp", "HTApplication", "HTInferenceOp", "ResultSinkOp", "flow_report", "run_app"]
