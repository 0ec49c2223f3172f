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


class _CudaArrayOnly:
    """Exposes only the CUDA array interface (as some GPU libraries' arrays do): a device array, by its attributes."""

    __cuda_array_interface__ = {"shape": (4, 5), "typestr": "|u1", "data": (0, False), "version": 3}


class _DLPackArray:
    """A DLPack producer over a torch tensor, claiming `device_type` for its DLPack device (the decision reads only
    that); `__dlpack__` hands over the tensor's own memory."""

    def __init__(self, tensor, device_type: int):
        self.tensor, self.device_type = tensor, device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, **kwargs):
        return self.tensor.__dlpack__()


def _device_predictor(package_path):
    """A `Predictor` whose runner declares the CUDA frame path (what the optimized backend on CUDA builds) while its
    frame pipeline runs on CPU tensors: the device path's logic, run where there is no GPU."""
    import torch

    from engine import Predictor
    from engine.optimize.frames import FramePipeline
    from engine.optimize.model import OptimizedHTModel
    from engine.package import load_package
    from engine.runner import Runner

    package = load_package(package_path)
    host = Predictor.load(package_path, backend="optimized")
    pipeline = FramePipeline(OptimizedHTModel(package.config, package.tensors).eval(), torch.device("cpu"))
    runner = Runner(run=host.runner.run, uses_torch=True, device="cuda:0", precision="fp32", run_frames=pipeline,
                    run_device_frames=pipeline.run_device)
    return Predictor(runner, task=host.task, classes=host.classes, preprocessing=host.preprocessing,
                     image_size=host.image_size, backend="optimized", source=host.source), pipeline


def test_the_device_path_is_chosen_by_capabilities_alone(package):
    import holoscan
    import torch

    from engine import Predictor
    from engine.holoscan.operators import is_device_array, takes_device_path

    frame = phantom_cine(1, 20, 30, seed=1).frames[0]
    assert is_device_array(_CudaArrayOnly()) and is_device_array(_DLPackArray(torch.zeros(2), 2))
    for host in (frame, holoscan.as_tensor(np.ascontiguousarray(frame)), torch.from_numpy(frame),
                 _DLPackArray(torch.zeros(2), 1), _DLPackArray(torch.zeros(2), 3), _DLPackArray(torch.zeros(2), 13)):
        assert not is_device_array(host)  # host, pinned (3) and managed (13) memory take the host path
    for backend in ("reference", "optimized"):
        cpu = Predictor.load(package, backend=backend)
        assert not cpu.takes_device_frames and not takes_device_path(cpu, _CudaArrayOnly())
    device, _ = _device_predictor(package)
    assert device.takes_device_frames and takes_device_path(device, _CudaArrayOnly())
    assert not takes_device_path(device, frame)  # a host frame keeps the host path on any predictor
    assert not device.with_probability_maps().takes_device_frames  # probability maps are made on the host


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("device_output", [False, True])
def test_the_device_path_runs_the_frame_in_place_and_keeps_the_mask_there(package, rgb, device_output):
    """`infer_device_frame` is what the operator runs once `takes_device_path` said yes. Without a GPU its frame is a
    DLPack producer of CPU memory (torch's DLPack import of CUDA memory needs CUDA), run by the CPU pipeline."""
    import torch

    from engine.holoscan.operators import device_frame, infer_device_frame, infer_host_frame

    predictor, pipeline = _device_predictor(package)
    pixels = phantom_cine(1, 37, 51, seed=4).frames[0]
    pixels = np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=2)) if rgb else pixels
    source = torch.from_numpy(pixels)
    wrapped = _DLPackArray(source, 1)
    assert device_frame(wrapped).data_ptr() == source.data_ptr()  # a view of the same memory: no copy
    output, frame, result = infer_device_frame(predictor, wrapped, index=7, device_output=device_output)
    assert frame.data_ptr() == source.data_ptr() and result.index == 7
    expected = pipeline([pixels])[0]
    np.testing.assert_array_equal(result.mask, expected)
    if device_output:
        assert isinstance(output, torch.Tensor) and output.device == source.device
        np.testing.assert_array_equal(output.numpy(), expected)
    else:
        assert isinstance(output, np.ndarray)
        np.testing.assert_array_equal(output, expected)
    host_output, host_pixels, host_result = infer_host_frame(predictor, pixels, index=7)
    assert host_pixels is pixels and host_result.index == 7
    np.testing.assert_array_equal(host_output, expected)


@pytest.mark.requires_cuda
def test_cuda_device_frames_through_the_holoscan_app(package):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible: device tensors between Holoscan operators need one")
    cupy = pytest.importorskip("cupy")
    from holoscan.conditions import CountCondition
    from holoscan.core import Application, Operator

    from engine import Predictor
    from engine.holoscan import HTInferenceOp, ResultSinkOp
    from engine.holoscan.operators import device_frame, is_device_array
    from engine.stream import CollectSink

    on_gpu = torch.arange(20, dtype=torch.uint8, device="cuda").reshape(4, 5)
    only_cai = type("CudaArray", (), {"__cuda_array_interface__": on_gpu.__cuda_array_interface__})()
    assert is_device_array(only_cai) and device_frame(only_cai).data_ptr() == on_gpu.data_ptr()
    predictor = Predictor.load(package, backend="optimized", device="cuda")
    assert predictor.takes_device_frames
    frames = [np.ascontiguousarray(f) for f in phantom_cine(3, 37, 51, seed=5).frames]
    sent, sink, seen = [], CollectSink(), []

    class DeviceSource(Operator):
        def setup(self, spec):
            spec.output("frame")

        def compute(self, op_input, op_output, context):
            op_output.emit({"frame": cupy.asarray(frames[len(sent)])}, "frame")
            sent.append(True)

    class DeviceMaskProbe(Operator):
        def setup(self, spec):
            spec.input("tensor")

        def compute(self, op_input, op_output, context):
            seen.append(is_device_array(op_input.receive("tensor")["mask"]))

    class App(Application):
        def compose(self):
            source = DeviceSource(self, CountCondition(self, len(frames)), name="gpu_source")
            inference = HTInferenceOp(self, predictor=predictor, info_port=False, device_output=True,
                                      name="inference")
            recorder = ResultSinkOp(self, sinks=[sink], info={"task": "seg", "classes": predictor.classes,
                                                             "source": "gpu"}, name="recorder")
            self.add_flow(source, inference, {("frame", "frame")})
            self.add_flow(inference, recorder, {("tensor", "tensor"), ("result", "result")})
            self.add_flow(inference, DeviceMaskProbe(self, name="probe"), {("tensor", "tensor")})

    App().run()
    assert seen == [True] * len(frames)
    for item, expected in zip(sink.results, predictor.predict(frames, batch_size=1)):
        np.testing.assert_array_equal(item.result.mask, expected.mask)
        np.testing.assert_array_equal(item.frame.pixels, frames[item.frame.index])
