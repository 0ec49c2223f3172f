"""`ht-engine holoscan`: the Holoscan SDK application (CPU) gives `predict`'s masks for every frame, and a report
whose frame count and latencies agree with Holoscan's data-flow tracker."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("holoscan", reason="the Holoscan SDK is the [holoscan] extra (holoscan-cu13)")

from PIL import Image  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.holoscan import flow_report  # noqa: E402
from engine.phantom import phantom_cine, write_dicom  # noqa: E402
from tests.test_clinical_io import _package  # noqa: E402

FRAMES = 7


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("pkg"), "seg", 3)


@pytest.mark.parametrize("config", [None, "examples/holoscan/ht_ultrasound.yaml"])
def test_holoscan_app_masks_equal_predict_and_report_agrees_with_tracker(tmp_path, package, config, capsys):
    source = tmp_path / "cine.dcm"
    write_dicom(source, phantom_cine(FRAMES, 41, 53, fps=12.0, seed=8).frames, fps=12.0)
    masks, report = tmp_path / "masks", tmp_path / "report.json"
    argv = ["holoscan", str(package), str(source), "--masks", str(masks), "--report", str(report)]
    assert main(argv + (["--config", config] if config else [])) == 0
    predicted = tmp_path / "predicted"
    assert main(["predict", str(package), str(source), "--out", str(predicted), "--batch-size", "1"]) == 0
    results = json.loads((predicted / "predictions.json").read_text())["results"]
    assert len(results) == FRAMES
    for entry in results:
        expected = np.asarray(Image.open(entry["mask"]))
        np.testing.assert_array_equal(np.asarray(Image.open(masks / f"mask_{entry['frame']:06d}.png")), expected)
    data = json.loads(report.read_text())
    assert data["frames_in"] == data["processed"] == FRAMES
    e2e = data["latency_ms"]["end_to_end"]
    assert e2e["count"] == FRAMES
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
    (tracked,) = data["tracker_ms"].values()
    # The tracker's own maximum and mean, in its own rounding (µs stamps, ms reported).
    assert e2e["max"] == pytest.approx(tracked["max"], abs=2e-3)
    assert e2e["mean"] == pytest.approx(tracked["avg"], abs=2e-3)
    assert set(data["latency_ms"]["operators"]) == {"source", "inference", "recorder"}
    assert f"{FRAMES} of {FRAMES} frames processed" in capsys.readouterr().out


def test_flow_report_takes_one_sample_per_frame():
    log = ("1:\n(source,100,110) -> (inference,120,300) -> (recorder,310,400)\n"
           "(source,100,105) -> (inference,115,300) -> (recorder,305,400)\n\n"
           "2:\n(source,500,510) -> (inference,520,700) -> (recorder,710,900)\n")
    report = flow_report(log)
    assert report["end_to_end"]["count"] == 2 and report["end_to_end"]["max"] == pytest.approx(0.4)
    assert report["end_to_end"]["p50"] == pytest.approx(0.35)
    assert report["operators"]["inference"]["max"] == pytest.approx(0.185)


def test_holoscan_app_reads_a_capture_device_through_pyav(tmp_path, package, capsys):
    import av

    graph = "testsrc=size=96x64:rate=30:duration=0.3"
    masks, report = tmp_path / "masks", tmp_path / "report.json"
    assert main(["holoscan", str(package), graph, "--input-format", "lavfi", "--masks", str(masks), "--report",
                 str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["frames_in"] == data["processed"] == 9 and data["source"] == f"lavfi:{graph}"
    with av.open(graph, format="lavfi") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    from engine import Predictor

    for result in Predictor.load(package).predict(frames, batch_size=1):
        np.testing.assert_array_equal(np.asarray(Image.open(masks / f"mask_{result.index:06d}.png")), result.mask)
    assert "9 of 9 frames processed" in capsys.readouterr().out


def test_inference_op_without_info_port_numbers_bare_frame_tensors(package):
    """An upstream that sends frame tensors only (Holoscan's V4L2 capture through a format converter does) feeds
    `HTInferenceOp(info_port=False)`; here a plain Python operator stands in for that pair."""
    from holoscan.conditions import CountCondition
    from holoscan.core import Application, Operator

    from engine import Predictor
    from engine.holoscan import HTInferenceOp, ResultSinkOp
    from engine.stream import CollectSink

    frames = [np.ascontiguousarray(f) for f in phantom_cine(4, 37, 51, seed=5).frames]

    class TensorOnlySource(Operator):
        def setup(self, spec):
            spec.output("frame")

        def compute(self, op_input, op_output, context):
            op_output.emit({"frame": frames[len(sent)]}, "frame")
            sent.append(True)

    sent, sink = [], CollectSink()
    predictor = Predictor.load(package)

    class App(Application):
        def compose(self):
            source = TensorOnlySource(self, CountCondition(self, len(frames)), name="capture")
            inference = HTInferenceOp(self, predictor=predictor, info_port=False, name="inference")
            recorder = ResultSinkOp(self, sinks=[sink], info={"task": "seg", "classes": predictor.classes,
                                                             "source": "capture"}, name="recorder")
            self.add_flow(source, inference, {("frame", "frame")})
            self.add_flow(inference, recorder, {("tensor", "tensor"), ("result", "result")})

    App().run()
    assert [item.frame.index for item in sink.results] == list(range(len(frames)))
    stamps = [item.frame.timestamp for item in sink.results]
    assert stamps[0] == 0.0 and all(later > earlier for earlier, later in zip(stamps, stamps[1:]))
    for item, expected in zip(sink.results, predictor.predict(frames, batch_size=1)):
        np.testing.assert_array_equal(item.result.mask, expected.mask)
