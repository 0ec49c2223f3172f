"""Frame artifacts (`build --frame-size HxW [--channels 1|3]`): uint8 frames in, masks or probabilities out, the
preprocessing (Pillow's luma and resize, exact) and postprocessing inside the graph; against `Predictor.predict` of
the package, the manifest's frame section, the TensorRT op check, a torch-free runtime, Triton's uint8 types."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from engine import Predictor
from engine.artifacts import open_artifact
from engine.config import AUTHORS_PREPROCESSING
from engine.errors import BackendError, InputError, PackageError
from engine.export.build import build_artifact
from engine.export.frame_graph import FramePreprocess, frame_model
from engine.export.manifest import MANIFEST, BatchRange, FrameSpec, manifest_digest
from engine.export.tensorrt import profile_shapes
from engine.export.trt_ops import check_tensorrt_ops
from engine.package import load_package, save_package
from engine.preprocess import pil_gray_resize
from engine.synthetic import synthetic_frame
from tests.helpers import run_without_torch, small_config, small_tensors

REPO = Path(__file__).resolve().parent.parent
SIZE = 96
# (package, height, width, channels): the shapes of the frame-path issue, one artifact each.
SEG_FRAMES = [(480, 640, 1), (600, 800, 3), (1080, 1920, 1), (1, 1, 1), (7, 3, 3)]
BUILDS = [("seg", *shape) for shape in SEG_FRAMES] + [("seg3", 480, 640, 1), ("cls", 600, 800, 3)]
BATCH = BatchRange(1, 2, 8)
MIN_AGREEMENT = 0.999
PROBABILITY_ATOL = 1e-5


def frames_for(height: int, width: int, channels: int, count: int, seed: int) -> list:
    """Fresh frames: ultrasound-like synthetic ones (noise on tiny sizes), tinted per channel for RGB."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        if min(height, width) > 16:
            gray = synthetic_frame(height, width, seed=seed + index)[0]
        else:
            gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
        if channels == 3:
            tint = rng.integers(-40, 40, size=(1, 1, 3))
            gray = np.clip(gray[..., None].astype(np.int16) + tint, 0, 255).astype(np.uint8)
        out.append(gray)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("frame-artifacts")


@pytest.fixture(scope="module")
def packages(workdir):
    """seg: two classes (the mask is the sign of one difference map); seg3: three (argmax), spectral filters."""
    made = {}
    for name, arch, task, filter_kind, classes in (("seg", "biomedclip-vit-b16", "seg", "channel", 2),
                                                   ("seg3", "metaclip-vit-b16", "seg", "spectral", 3),
                                                   ("cls", "openai-clip-vit-b16", "cls", "channel", 3)):
        cfg = small_config(arch, task, filter_kind, num_classes=classes, image_size=SIZE,
                           preprocessing=dict(AUTHORS_PREPROCESSING, size=SIZE))
        made[name] = workdir / f"{name}.htpkg"
        save_package(made[name], cfg, small_tensors(cfg, seed=3))
    return made


@pytest.fixture(scope="module")
def artifacts(workdir, packages):
    return {(name, h, w, c): open_artifact(build_artifact(packages[name], "onnx", "fp32", BATCH,
                                                          workdir / f"{name}-{h}x{w}x{c}", frame=FrameSpec(h, w, c)))
            for name, h, w, c in BUILDS}


@pytest.fixture(scope="module")
def references(packages):
    return {name: Predictor.load(path) for name, path in packages.items()}


def agreement(results, expected) -> float:
    same = sum(int((r.mask == e.mask).sum()) for r, e in zip(results, expected))
    return same / sum(e.mask.size for e in expected)


@pytest.mark.parametrize("name,height,width,channels", [b for b in BUILDS if b[0] != "cls"])
@pytest.mark.parametrize("batch", [1, 5])
def test_masks_match_the_reference(artifacts, references, name, height, width, channels, batch):
    predictor = Predictor.load(artifacts[name, height, width, channels].directory)
    frames = frames_for(height, width, channels, batch, seed=height + width + batch)
    results = predictor.predict(frames)
    expected = references[name].predict(frames)
    assert [r.mask.shape for r in results] == [(height, width)] * batch
    assert all(r.mask.dtype == np.uint8 for r in results)
    assert agreement(results, expected) >= MIN_AGREEMENT


@pytest.mark.parametrize("batch", [1, 5])
def test_cls_probabilities_match_the_reference(artifacts, references, batch):
    predictor = Predictor.load(artifacts["cls", 600, 800, 3].directory)
    frames = frames_for(600, 800, 3, batch, seed=batch)
    results = predictor.predict(frames)
    expected = references["cls"].predict(frames)
    actual = np.stack([r.probabilities for r in results])
    assert actual.dtype == np.float32 and actual.shape == (batch, 3)
    np.testing.assert_allclose(actual, np.stack([e.probabilities for e in expected]), rtol=0, atol=PROBABILITY_ATOL)
    assert [r.label for r in results] == [e.label for e in expected]


@pytest.mark.parametrize("height,width,channels", [(480, 640, 1), (600, 800, 3), (1080, 1920, 1), (1, 1, 1),
                                                   (7, 3, 3), (300, 40, 1), (224, 500, 3), (1000, 224, 1),
                                                   (224, 224, 3)])
def test_in_graph_preprocessing_is_pillows(tmp_path, height, width, channels):
    """The exported preprocessing graph (both pass orders, one pass, none) equals Pillow on every pixel."""
    frame = FrameSpec(height, width, channels)
    module = FramePreprocess(frame, 224).eval()
    rng = np.random.default_rng(height * width)
    frames = np.stack(frames_for(height, width, channels, 2, seed=7) + [rng.integers(0, 256, frame.shape,
                                                                                     dtype=np.uint8)])
    path = tmp_path / "preprocess.onnx"
    dim = torch.export.Dim("batch", min=1, max=4)
    with torch.no_grad():
        program = torch.onnx.export(module, (torch.from_numpy(frames),), dynamo=True, input_names=["frames"],
                                    output_names=["plane"], dynamic_shapes={"frames": {0: dim}}, verbose=False)
    program.save(str(path))
    check_tensorrt_ops(onnx.load(str(path)), "the preprocessing graph")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"frames": frames})[0]
    expected = np.stack([pil_gray_resize(f, 224) for f in frames]).astype(np.float32)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_frame_model_input_equals_predictor_preprocess(packages, references, channels):
    frame = FrameSpec(61, 77, channels)
    model = frame_model(load_package(packages["seg"]), frame)
    frames = frames_for(61, 77, channels, 3, seed=channels)
    with torch.no_grad():
        actual = model.model_input(torch.from_numpy(np.stack(frames))).numpy()
    np.testing.assert_array_equal(actual, references["seg"].preprocess(frames))


def test_exported_frame_graphs_pass_the_tensorrt_op_check(artifacts):
    for key, artifact in artifacts.items():
        check_tensorrt_ops(onnx.load(str(artifact.model_file)), f"frame graph {key}")
        assert artifact.manifest["onnx"]["tensorrt_parser_ok"] is True


def test_manifest_records_the_frame(artifacts):
    seg = artifacts["seg", 600, 800, 3].manifest
    assert seg["frame"] == {"height": 600, "width": 800, "channels": 3}
    assert seg["inputs"] == [{"name": "frames", "dtype": "uint8", "shape": [-1, 600, 800, 3]}]
    assert seg["outputs"] == [{"name": "mask", "dtype": "uint8", "shape": [-1, 600, 800]}]
    cls = artifacts["cls", 600, 800, 3].manifest
    assert cls["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [-1, 3]}]
    proto = onnx.load(str(artifacts["seg", 1080, 1920, 1].model_file))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def _copy(artifact, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifact.directory, target)
    return target


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["frame"].update(height=481), "inputs .* does not fit"),
    (lambda m: m["frame"].update(channels=2), "--channels must be one of"),
    (lambda m: m["frame"].update(width="640"), "frame.width"),
    (lambda m: m["frame"].update(depth=1), "exactly the keys"),
    (lambda m: m["outputs"][0].update(dtype="float32"), "outputs .* does not fit"),
    (lambda m: m["inputs"][0].update(shape=[-1, 480, 640, 3]), "inputs .* does not fit"),
])
def test_refuses_a_tampered_frame_section(artifacts, tmp_path, edit, message):
    target = _copy(artifacts["seg", 480, 640, 1], tmp_path)
    manifest = json.loads((target / MANIFEST).read_text())
    edit(manifest)
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="altered after it was written"):
        open_artifact(target)
    # Even resealed (a forged digest), the field's type and its fit to the inputs and outputs are checked.
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=message):
        open_artifact(target)


def test_wrong_frame_size_and_forward_are_refused(artifacts):
    predictor = Predictor.load(artifacts["seg", 480, 640, 1].directory)
    with pytest.raises(InputError, match=r"shape \[600, 800\].*\[480, 640\]"):
        predictor.predict(np.zeros((600, 800), dtype=np.uint8))
    with pytest.raises(InputError, match=r"shape \[480, 640, 3\].*\[480, 640\]"):
        predictor.predict(np.zeros((480, 640, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="frame artifact .*predict"):
        predictor.forward(np.zeros((1, 3, SIZE, SIZE), dtype=np.float32))


def test_bench_refuses_a_frame_artifact(artifacts, packages):
    from engine.bench.suite import BenchOptions, resolve_source

    with pytest.raises(BackendError, match="frame artifact .*without --frame-size"):
        resolve_source(BenchOptions(source=artifacts["seg", 1, 1, 1].directory, package=packages["seg"]))


def test_build_refuses_what_frame_artifacts_cannot_be(packages, tmp_path):
    with pytest.raises(BackendError, match="frame artifacts are built in"):
        build_artifact(packages["seg"], "onnx", "fp16", BATCH, tmp_path / "a", frame=FrameSpec(8, 8))
    with pytest.raises(BackendError, match="--channels must be one of"):
        build_artifact(packages["seg"], "onnx", "fp32", BATCH, tmp_path / "a", frame=FrameSpec(8, 8, 2))
    assert not (tmp_path / "a").exists()
    for text in ("1080", "1080x", "axb", "0x5", "5x99999"):
        with pytest.raises(BackendError, match="frame size|--frame-size"):
            FrameSpec.parse(text)
    assert FrameSpec.parse("1080X1920", 3).shape == (1080, 1920, 3)


def test_tensorrt_profile_spans_uint8_frames():
    assert profile_shapes(BatchRange(1, 4, 16), 224, FrameSpec(1080, 1920, 3)) == (
        (1, 1080, 1920, 3), (4, 1080, 1920, 3), (16, 1080, 1920, 3))


def test_no_torch_in_the_frame_artifact_runtime(artifacts, tmp_path):
    """A fresh interpreter where importing torch fails predicts with a frame artifact."""
    directory = artifacts["seg", 600, 800, 3].directory
    run_without_torch(f"""import numpy as np
from engine import Predictor
predictor = Predictor.load({str(directory)!r})
frames = np.random.default_rng(1).integers(0, 256, (3, 600, 800, 3), dtype=np.uint8)
results = predictor.predict(frames)
assert [r.mask.shape for r in results] == [(600, 800)] * 3
""", tmp_path)


def test_cli_build_and_export_triton_of_a_frame_artifact(packages, tmp_path, capsys):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] (Triton's model-config protobuf) not installed")
    from engine.cli import main

    out = tmp_path / "artifact"
    assert main(["build", str(packages["seg"]), "--backend", "onnx", "--batch", "1,2,4", "--frame-size", "7x3",
                 "--channels", "3", "--out", str(out)]) == 0
    assert "frames 7x3x3 uint8" in capsys.readouterr().out
    assert main(["build", str(packages["seg"]), "--backend", "onnx", "--channels", "3",
                 "--out", str(tmp_path / "no")]) != 0
    assert "--channels applies to frame artifacts only" in capsys.readouterr().err
    repo = tmp_path / "repo"
    assert main(["export-triton", str(out), "--out", str(repo), "--name", "ht_frames"]) == 0
    config = text_format.Parse((repo / "ht_frames" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [(t.name, list(t.dims), t.data_type) for t in config.input] == [
        ("frames", [7, 3, 3], model_config_pb2.TYPE_UINT8)]
    assert [(t.name, list(t.dims), t.data_type) for t in config.output] == [
        ("mask", [7, 3], model_config_pb2.TYPE_UINT8)]
