"""The Holoscan application: source → model → recorder, run with data-flow tracking, and its report.

Latencies come from Holoscan's own data-flow tracker: it stamps every message as each operator receives and
publishes it. The tracker's summary holds only min/avg/max, so the tracker also logs every message's path
(`enable_logging`), and the percentiles are computed from that log: end to end is the source's first stamp to the
sink's last stamp of one frame, an operator's time the span between its own two stamps.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from holoscan.core import Application, DataFlowMetric, Tracker

from ..errors import InputError
from ..stream import Source
from .operators import FrameSourceOp, HTInferenceOp, ResultSinkOp

_HOP = re.compile(r"\(([^,()]+),(\d+),(\d+)\)")
PERCENTILES = (50, 95, 99)


class HTApplication(Application):
    """`source` → `inference` → `recorder`. Parameters of the YAML config (`app.config(path)`), as in HoloHub's
    ultrasound apps: `source: {fps, realtime}` (the source itself is the command's argument) and
    `scheduler: {name: greedy|multi_thread|event_based, worker_thread_number}`."""

    def __init__(self, predictor, source, sinks=(), *args, **kwargs):
        self.predictor = predictor
        self.source_spec = source
        self.sinks = list(sinks)
        super().__init__(*args, **kwargs)

    def _section(self, name: str) -> dict:
        try:
            return dict(self.kwargs(name))
        except Exception:  # the SDK raises a bare RuntimeError/KeyError for a section the config lacks
            return {}

    def compose(self) -> None:
        options = self._section("source")
        source = FrameSourceOp(self, source=self.source_spec, fps=options.get("fps"),
                               realtime=bool(options.get("realtime", False)), name="source")
        inference = HTInferenceOp(self, predictor=self.predictor, name="inference")
        info = {"task": self.predictor.task, "classes": list(self.predictor.classes),
                "source": source_name(self.source_spec)}
        recorder = ResultSinkOp(self, sinks=self.sinks, info=info, name="recorder")
        self.add_flow(source, inference, {("frame", "frame"), ("info", "info")})
        self.add_flow(inference, recorder, {("tensor", "tensor"), ("result", "result")})
        self.source_op, self.inference_op = source, inference
        self._set_scheduler(self._section("scheduler"))

    def _set_scheduler(self, options: dict) -> None:
        from holoscan.schedulers import EventBasedScheduler, GreedyScheduler, MultiThreadScheduler

        kinds = {"greedy": GreedyScheduler, "multi_thread": MultiThreadScheduler, "event_based": EventBasedScheduler}
        name = options.pop("name", "greedy")
        if name not in kinds:
            raise InputError(f"scheduler name {name!r} is not one of {sorted(kinds)}")
        self.scheduler(kinds[name](self, name="scheduler", **options))


def source_name(source) -> str:
    """How reports and sinks name a source: a `Source`'s own name (a capture device's `v4l2:/dev/video0`), else the
    path as given."""
    return source.name if isinstance(source, Source) else str(source)


def _summary(values_ms: list) -> dict:
    if not values_ms:
        return {"count": 0}
    values = np.asarray(values_ms, dtype=np.float64)
    summary = {"count": int(values.size), "mean": float(values.mean())}
    summary.update({f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES})
    summary["max"] = float(values.max())
    return summary


def flow_report(log_text: str) -> dict:
    """The data-flow tracker's message log → end-to-end and per-operator latency summaries (ms), one sample per
    frame. The log numbers each source message (`N:`) and lists, under it, one line per path it took through the
    ports, each hop `(operator, received_us, published_us)`; a frame's end to end is its earliest stamp to its
    latest, an operator's time its earliest receive to its latest publish."""
    frames = []
    for line in log_text.splitlines():
        if re.fullmatch(r"\s*\d+:\s*", line):
            frames.append({})
            continue
        for name, received, published in _HOP.findall(line):
            if not frames:
                frames.append({})
            first, last = frames[-1].get(name, (int(received), int(published)))
            frames[-1][name] = (min(first, int(received)), max(last, int(published)))
    frames = [hops for hops in frames if hops]
    end_to_end = [(max(p for _, p in hops.values()) - min(r for r, _ in hops.values())) / 1e3 for hops in frames]
    operators: dict = {}
    for hops in frames:
        for name, (received, published) in hops.items():
            operators.setdefault(name, []).append((published - received) / 1e3)
    return {"end_to_end": _summary(end_to_end), "operators": {name: _summary(v) for name, v in operators.items()}}


def run_app(predictor, source, config=None, sinks=()) -> dict:
    """Run source → model → `sinks` as a Holoscan application with data-flow tracking; return the report."""
    app = HTApplication(predictor, source, sinks)
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise InputError(f"--config {config}: no such file (expected a Holoscan YAML config)")
        app.config(str(config))
    with tempfile.TemporaryDirectory(prefix="ht-holoscan-") as folder:
        log = Path(folder) / "flow.log"
        # Every message counts: the tracker would otherwise skip the first and drop the last 10.
        with Tracker(app, filename=str(log), num_start_messages_to_skip=0, num_last_messages_to_discard=0) as tracker:
            app.run()
            tracked = {path: {"min": tracker.get_metric(path, DataFlowMetric.MIN_E2E_LATENCY),
                              "avg": tracker.get_metric(path, DataFlowMetric.AVG_E2E_LATENCY),
                              "max": tracker.get_metric(path, DataFlowMetric.MAX_E2E_LATENCY),
                              "messages": tracker.get_metric(path, DataFlowMetric.NUM_DST_MESSAGES)}
                       for path in tracker.get_path_strings()}
        flow = flow_report(log.read_text() if log.exists() else "")
    # The frame source last: the predictor's provenance names its model file under the same key (as in the stream
    # report, "source" is where the frames came from; the command adds the model as "artifact").
    return {"frames_in": app.source_op.emitted, "processed": app.inference_op.frames, "tracker_ms": tracked,
            "latency_ms": flow, "task": predictor.task, **predictor.provenance(), "source": source_name(source)}
