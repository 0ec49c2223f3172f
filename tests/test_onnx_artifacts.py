"""ONNX artifacts: build, manifest, refusal of corrupt/mismatched artifacts, accuracy against the reference, the
TensorRT op check, and a torch-free runtime."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engine import Predictor
from engine.artifacts import open_artifact
from engine.backends import onnx as onnx_backend
from engine.errors import BackendError, InputError, PackageError
from engine.export.build import build_artifact
from engine.export.manifest import DIGEST_KEY, INPUT_NAME, MANIFEST, BatchRange, manifest_digest
from engine.export.onnx_export import FP32_OPS, graph_ops
from engine.export.trt_ops import TABLE, check_tensorrt_ops, op_table
from engine.synthetic import synthetic_frame
from tests.artifact_helpers import build_artifacts, small_package
from tests.helpers import random_images, run_without_torch
from tests.tolerances import RELATIVE, assert_relative, relative_error

REPO = Path(__file__).resolve().parent.parent
CASES = {"seg": ("biomedclip-vit-b16", "seg", "channel"), "cls": ("openai-clip-vit-b16", "cls", "channel"),
         "spectral": ("metaclip-vit-b16", "seg", "spectral")}
BUILDS = [("seg", "fp32"), ("seg", "fp16"), ("seg", "int8"), ("cls", "fp32"), ("spectral", "fp32"),
          ("spectral", "fp16")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def packages(workdir):
    made = {}
    for name, (arch, task, filter_kind) in CASES.items():
        path = workdir / f"{name}.htpkg"
        made[name] = (path, small_package(path, arch, task, filter_kind, size=96 if task == "seg" else 112))
    return made


@pytest.fixture(scope="module")
def artifacts(workdir, packages):
    return build_artifacts(workdir, packages, "onnx", BUILDS)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 4])
def test_fp32_matches_reference(packages, artifacts, name, batch):
    _, reference = packages[name]
    predictor = Predictor.load(artifacts[name, "fp32"].directory, backend="onnx")
    x = random_images(batch, reference.cfg.image_size, seed=10 + batch)
    with torch.no_grad():
        expected = reference(x)
    actual = predictor.forward(x.numpy())
    assert isinstance(actual, np.ndarray) and actual.dtype == np.float32
    assert_relative(torch.from_numpy(actual), expected, RELATIVE[torch.float32], f"onnx fp32 {name} batch {batch}")
    # torch tensors in give torch tensors out
    assert_relative(predictor.forward(x), expected, RELATIVE[torch.float32], f"onnx fp32 {name} torch in")


@pytest.mark.parametrize("name", ["seg", "spectral"])
@pytest.mark.parametrize("batch", [1, 4])
def test_fp16_error_is_bounded(packages, artifacts, name, batch):
    _, reference = packages[name]
    predictor = Predictor.load(artifacts[name, "fp16"].directory, backend="onnx", precision="fp16")
    x = random_images(batch, reference.cfg.image_size, seed=20 + batch)
    with torch.no_grad():
        expected = reference(x)
    actual = torch.from_numpy(predictor.forward(x.numpy()))
    assert_relative(actual, expected, RELATIVE[torch.float16], f"onnx fp16 {name} batch {batch}")
    # fp16 really is fp16: it does not reproduce the fp32 result bit for bit
    assert relative_error(actual, expected) > RELATIVE[torch.float64]


@pytest.mark.parametrize("batch", [1, 4])
def test_int8_error_is_bounded(packages, artifacts, batch):
    _, reference = packages["seg"]
    predictor = Predictor.load(artifacts["seg", "int8"].directory, precision="int8")
    # int8 activation ranges are calibrated on ultrasound-like frames: test on unseen frames of that kind
    # (uniform noise images would sit outside the calibrated ranges, as they would outside any real scan).
    frames = [synthetic_frame(150 + 17 * i, 200 + 23 * i, seed=1000 + batch * 10 + i)[0] for i in range(batch)]
    x = torch.from_numpy(predictor.preprocess(frames))
    with torch.no_grad():
        expected = reference(x)
    actual = torch.from_numpy(predictor.forward(x.numpy()))
    assert_relative(actual, expected, RELATIVE[torch.int8], f"onnx int8 batch {batch}")
    assert relative_error(actual, expected) > RELATIVE[torch.float16], "an int8 graph cannot be this exact"


def test_int8_graph_is_explicitly_quantized_with_zero_points_zero(artifacts):
    proto = onnx.load(str(artifacts["seg", "int8"].model_file))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    zero_points = [init for init in proto.graph.initializer if "zero_point" in init.name]
    assert zero_points and not any(onnx.numpy_helper.to_array(z).any() for z in zero_points)
    quantized_types = {z.data_type for z in zero_points}
    assert quantized_types == {onnx.TensorProto.INT8}


def test_int8_quantizes_the_backbone_gemms_and_keeps_the_rest_float(packages, artifacts):
    """qkv, attention projection, fc1 and fc2 of every kept block after the first `FLOAT_BLOCKS` (weights with both
    sides >= the width) get Q/DQ; the embedding, the first blocks, the adapters' small GEMMs, the attention products
    and the per-sample convolutions stay float."""
    import ast

    from engine.export.quantize import FLOAT_BLOCKS, gemm_nodes
    from engine.package import read_package

    cfg = read_package(packages["seg"][0])[0]
    fp32 = onnx.load(str(artifacts["seg", "fp32"].model_file))
    quantized, kept = gemm_nodes(fp32, cfg.width)
    blocks = max(cfg.extract_layers) + 1  # blocks after the last extracted one are pruned
    assert FLOAT_BLOCKS < blocks
    assert len(quantized) == 4 * (blocks - FLOAT_BLOCKS) and kept
    scopes = {node.name: ast.literal_eval(next(p.value for p in node.metadata_props
                                               if p.key == "pkg.torch.onnx.name_scopes"))
              for node in fp32.graph.node if node.name in quantized}
    roles = sorted(scope[-2].rsplit(".", 1)[-1] for scope in scopes.values())
    assert roles == sorted(["qkv", "proj", "fc1", "fc2"] * (blocks - FLOAT_BLOCKS))
    early = {f"blocks.{index}" for index in range(FLOAT_BLOCKS)} | {"embed"}
    assert not any(set(scope) & early for scope in scopes.values())
    int8 = onnx.load(str(artifacts["seg", "int8"].model_file))
    dequantized = {node.output[0] for node in int8.graph.node if node.op_type == "DequantizeLinear"}
    fed = [node.name for node in int8.graph.node if node.op_type in ("MatMul", "Gemm", "Conv")
           and any(name in dequantized for name in node.input)]
    assert sorted(fed) == sorted(quantized)


def test_fp16_keeps_layernorm_and_softmax_in_fp32(artifacts):
    proto = onnx.load(str(artifacts["seg", "fp16"].model_file))
    proto = onnx.shape_inference.infer_shapes(proto)
    types = {value.name: value.type.tensor_type.elem_type for value in
             list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    types.update({init.name: init.data_type for init in proto.graph.initializer})
    kept = [node for node in proto.graph.node if node.op_type in FP32_OPS]
    assert {node.op_type for node in kept} == set(FP32_OPS)
    for node in kept:
        for name in list(node.input) + list(node.output):
            if name in types:
                assert types[name] == onnx.TensorProto.FLOAT, f"{node.op_type} {node.name}: {name} is not float32"
    matmul_weights = [init for init in proto.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16]
    assert matmul_weights, "an fp16 graph must carry fp16 weights"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_manifest_records_the_build(packages, artifacts):
    artifact = artifacts["seg", "fp32"]
    manifest = artifact.manifest
    cfg = packages["seg"][1].cfg
    assert manifest["backend"] == "onnx" and manifest["precision"] == "fp32"
    assert manifest["batch"] == {"min": 1, "opt": 2, "max": 8}
    assert manifest["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, 96, 96]}]
    assert manifest["outputs"][0]["shape"] == [-1, cfg.num_classes, 96, 96]
    assert manifest["preprocessing"] == cfg.preprocessing
    assert manifest["model"]["classes"] == cfg.classes
    assert manifest["onnx"]["opset"] >= 17
    assert {"torch", "onnx", "onnxruntime", "ht-engine"} <= set(manifest["tools"])
    proto = onnx.load(str(artifact.model_file))
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "batch dimension must be dynamic"


def test_batch_range_is_enforced(artifacts):
    predictor = Predictor.load(artifacts["cls", "fp32"].directory)
    assert predictor.backend == "onnx"
    with pytest.raises(InputError, match="maximum batch 8"):
        predictor.forward(np.random.default_rng(0).random((9, 3, 112, 112), dtype=np.float32))


def test_predict_runs_raw_frames(artifacts):
    predictor = Predictor.load(artifacts["seg", "fp32"].directory)
    frames = [np.random.default_rng(i).integers(0, 256, (70 + i, 53), dtype=np.uint8) for i in range(3)]
    results = predictor.predict(frames, batch_size=2)
    assert [r.mask.shape for r in results] == [(70, 53), (71, 53), (72, 53)]


def test_package_on_the_onnx_backend_builds_on_the_fly(packages):
    path, reference = packages["cls"]
    predictor = Predictor.load(path, backend="onnx")
    assert predictor.backend == "onnx" and predictor.sha256 == open_artifact(
        predictor.runner.run.artifact.directory).manifest["package_sha256"]
    x = random_images(2, reference.cfg.image_size, seed=70)
    with torch.no_grad():
        expected = reference(x)
    assert_relative(torch.from_numpy(predictor.forward(x.numpy())), expected, RELATIVE[torch.float32], "on the fly")


# ---------------------------------------------------------------- host/device split (run_split, IO binding)

def _cpu_session(artifact):
    import onnxruntime

    return onnxruntime.InferenceSession(str(artifact.model_file), providers=["CPUExecutionProvider"])


def test_bound_run_gives_run_s_output_and_three_phases(artifacts):
    """The IO-binding path on ONNX Runtime's CPU provider (the CUDA one binds "cuda" memory the same way): the same
    output as `session.run` at every batch size in turn, a device input re-allocated only when the batch shape
    changes, non-contiguous input accepted."""
    import onnxruntime

    artifact = artifacts["seg", "fp32"]
    session = _cpu_session(artifact)
    output_names = [output["name"] for output in artifact.manifest["outputs"]]
    bound = onnx_backend._BoundRun(onnxruntime, session, output_names[0], "cpu", 0)
    allocated = []
    for batch, seed in ((2, 1), (2, 2), (1, 3), (3, 4)):
        x = random_images(batch, 96, seed=seed).numpy()
        strided = x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
        for images in (x, strided):
            output, phases = bound(images)
            np.testing.assert_array_equal(output, session.run(output_names, {INPUT_NAME: x})[0])
            assert len(phases) == 3 and all(ms >= 0 for ms in phases)
        allocated.append(bound.device_input)
    assert allocated[0] is allocated[1] and allocated[2] is not allocated[1] and allocated[3] is not allocated[2]
    assert [list(value.shape()) for value in allocated[1:]] == [[2, 3, 96, 96], [1, 3, 96, 96], [3, 3, 96, 96]]


class _RecordingBinding:
    """An IOBinding that logs its calls into the log the clock ticks into."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        def call(*args):
            self.log.append(name)
            return [np.full((1, 2), 5.0, dtype=np.float32)] if name == "copy_outputs_to_cpu" else None

        return call


def test_bound_run_reads_the_clock_between_synchronized_phases():
    log, ticks = [], iter([10_000_000, 11_500_000, 15_500_000, 16_000_000])

    def clock():
        log.append("tick")
        return next(ticks)

    class DeviceValue:
        def __init__(self, shape):
            self.value_shape = list(shape)

        def shape(self):
            return self.value_shape

        def update_inplace(self, host):
            log.append("update_inplace")

    def from_shape_and_type(shape, dtype, device_type, device_id):
        log.append(f"allocate {device_type}:{device_id}")
        return DeviceValue(shape)

    fake_ort = types.SimpleNamespace(OrtValue=types.SimpleNamespace(ortvalue_from_shape_and_type=from_shape_and_type))
    session = types.SimpleNamespace(io_binding=lambda: _RecordingBinding(log),
                                    run_with_iobinding=lambda binding: log.append("run_with_iobinding"))
    bound = onnx_backend._BoundRun(fake_ort, session, "logits", "cuda", 1, clock=clock)
    output, phases = bound(np.ones((1, 3, 4, 4), dtype=np.float32))
    assert log == ["tick", "allocate cuda:1", "bind_ortvalue_input", "clear_binding_outputs", "bind_output",
                   "update_inplace", "synchronize_inputs", "tick", "run_with_iobinding", "synchronize_outputs", "tick",
                   "copy_outputs_to_cpu", "tick"]
    assert phases == pytest.approx((1.5, 4.0, 0.5)) and (output == 5.0).all()


@pytest.mark.parametrize("providers, split", [(["CUDAExecutionProvider", "CPUExecutionProvider"], True),
                                              (["TensorrtExecutionProvider", "CPUExecutionProvider"], True),
                                              (["CPUExecutionProvider"], False)])
def test_load_offers_the_split_only_where_a_gpu_provider_runs(artifacts, monkeypatch, providers, split):
    """Decided from the providers the session really has: ONNX Runtime falls back to the CPU provider silently when
    its CUDA libraries do not load."""
    import onnxruntime

    class Session:
        def __init__(self, path, options, providers):
            pass

        def get_providers(self):
            return providers

        def io_binding(self):
            return _RecordingBinding([])

    monkeypatch.setattr(onnx_backend, "providers_for", lambda device: providers)
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    runner = onnx_backend.load(artifacts["seg", "fp32"], "cuda:1", "fp32")
    assert (runner.run_split is not None) == split
    assert runner.split_timer == ("perf_counter_ns" if split else None)
    if split:
        assert (runner.run_split.device_type, runner.run_split.device_id) == ("cuda", 1)


def test_cpu_runner_has_no_split(artifacts):
    runner = Predictor.load(artifacts["seg", "fp32"].directory).runner
    assert runner.run_split is None and runner.split_timer is None


def _copy(artifact, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifact.directory, target)
    return target


def test_refuses_missing_manifest(artifacts, tmp_path):
    target = _copy(artifacts["cls", "fp32"], tmp_path)
    (target / MANIFEST).unlink()
    with pytest.raises(PackageError, match="without manifest.json"):
        Predictor.load(target, backend="onnx")


def test_refuses_altered_model_file(artifacts, tmp_path):
    target = _copy(artifacts["cls", "fp32"], tmp_path)
    data = bytearray((target / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (target / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="altered or corrupt"):
        Predictor.load(target, backend="onnx")


def test_refuses_missing_model_file(artifacts, tmp_path):
    target = _copy(artifacts["cls", "fp32"], tmp_path)
    (target / "model.onnx").unlink()
    with pytest.raises(PackageError, match="model.onnx is listed"):
        Predictor.load(target)


def test_refuses_wrong_backend_and_precision(artifacts):
    directory = artifacts["cls", "fp32"].directory
    with pytest.raises(PackageError, match="is a 'onnx' artifact; it cannot run on backend 'aoti' .*run it on "
                       "backend 'onnx' or name no backend"):
        Predictor.load(directory, backend="aoti")
    with pytest.raises(PackageError, match="built for precision 'fp32', not 'fp16'; run it at its own precision"):
        Predictor.load(directory, backend="onnx", precision="fp16")
    # What the messages advise works.
    assert Predictor.load(directory, backend="onnx").backend == Predictor.load(directory).backend == "onnx"


@pytest.mark.parametrize("field,value,message", [
    ("format_version", 99, "format version 99"),
    ("backend", "coreml", "names backend 'coreml'"),
    ("format", "something", "format 'something'"),
    ("batch", {"min": 4, "opt": 2, "max": 8}, "invalid batch range"),
])
def test_refuses_edited_manifest(artifacts, tmp_path, field, value, message):
    target = _copy(artifacts["cls", "fp32"], tmp_path)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest[field] = value
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=message if field.startswith("format") else "altered after it was written"):
        open_artifact(target)
    manifest[DIGEST_KEY] = manifest_digest(manifest)  # resealed: the field's own check refuses it
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=message):
        open_artifact(target)


def test_refuses_garbled_manifest(artifacts, tmp_path):
    target = _copy(artifacts["cls", "fp32"], tmp_path)
    (target / MANIFEST).write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        open_artifact(target)


def test_failed_build_leaves_nothing_and_keeps_the_previous_artifact(packages, artifacts, tmp_path):
    out = _copy(artifacts["cls", "fp32"], tmp_path)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(BackendError, match="precisions"):
        build_artifact(packages["cls"][0], "onnx", "bf16", BatchRange(1, 1, 2), out)
    with pytest.raises(BackendError, match="batch range"):
        build_artifact(packages["cls"][0], "onnx", "fp32", BatchRange(3, 2, 2), out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"], "no staging directory may be left behind"
    fresh = tmp_path / "fresh"
    with pytest.raises(PackageError):
        build_artifact(tmp_path / "missing.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), fresh)
    assert not fresh.exists()


@pytest.mark.parametrize("text,expected", [("1,4,16", BatchRange(1, 4, 16)), ("3", BatchRange(3, 3, 3))])
def test_batch_range_parse(text, expected):
    assert BatchRange.parse(text) == expected


@pytest.mark.parametrize("text", ["0,1,2", "4,2,8", "1,2", "a,b,c", "1,2,3,4"])
def test_batch_range_parse_rejects(text):
    with pytest.raises(BackendError, match="batch"):
        BatchRange.parse(text)


def test_op_table_keeps_its_source_and_facts():
    table = op_table()
    assert "onnx-tensorrt" in table.source and "11.1" in TABLE.name
    assert {"LayerNormalization", "MatMul", "Conv", "Softmax", "Resize"} <= table.supported
    assert "DFT" in table.unsupported


@pytest.mark.parametrize("build", BUILDS, ids="-".join)
def test_exported_graphs_pass_the_tensorrt_op_check(artifacts, build):
    artifact = artifacts[build]
    proto = onnx.load(str(artifact.model_file))
    check_tensorrt_ops(proto, str(artifact.model_file))
    assert not {"DFT", "STFT"} & graph_ops(proto), "the deployable graph must do its spectral filter as matmuls"
    assert artifact.manifest["onnx"]["tensorrt_parser_ok"] is True


def test_op_check_names_an_unsupported_op():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 2])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("DFT", ["r"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert graph_ops(proto) == {"Relu", "DFT"}
    with pytest.raises(BackendError, match="DFT") as info:
        check_tensorrt_ops(proto, "test graph")
    assert "Relu" not in str(info.value)
    custom = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Fancy", ["x"], ["y"], domain="com.example")], "g", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("com.example", 1)])
    with pytest.raises(BackendError, match="com.example::Fancy"):
        check_tensorrt_ops(custom)


def test_no_torch_in_the_onnx_runtime_path(artifacts, tmp_path):
    """A fresh interpreter where importing torch fails loads and runs an ONNX artifact, numpy in and out."""
    directory = artifacts["seg", "fp32"].directory
    run_without_torch(f"""import numpy as np
from engine import Predictor, available_backends
assert "onnx" in available_backends("cpu")
predictor = Predictor.load({str(directory)!r})
x = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
logits = predictor.forward(x)
assert isinstance(logits, np.ndarray) and logits.shape == (2, 3, 96, 96), logits.shape
frame = np.random.default_rng(1).integers(0, 256, (61, 77), dtype=np.uint8)
assert predictor.predict(frame)[0].mask.shape == (61, 77)
""", tmp_path)


def test_cli_build_and_export_triton(packages, tmp_path, capsys):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] (Triton's model-config protobuf) not installed")
    from engine.cli import main

    out = tmp_path / "artifact"
    assert main(["build", str(packages["cls"][0]), "--backend", "onnx", "--batch", "1,3,6", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "exporting ONNX (fp32)" in captured.err and "done in" in captured.err
    assert "built" in captured.out
    repo = tmp_path / "repo"
    assert main(["export-triton", str(out), "--out", str(repo), "--name", "ht_cls", "--instances", "2"]) == 0
    model_dir = repo / "ht_cls"
    assert (model_dir / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "ht_cls" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 6
    assert [(t.name, list(t.dims), t.data_type) for t in config.input] == [
        ("images", [3, 112, 112], model_config_pb2.TYPE_FP32)]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [3])]
    assert list(config.dynamic_batching.preferred_batch_size) == [3, 6]
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_export_triton_refuses_what_triton_cannot_serve(artifacts, tmp_path):
    from engine.export.triton_repository import config_pbtxt, export_triton

    manifest = dict(artifacts["cls", "fp32"].manifest)
    with pytest.raises(BackendError, match="not 'aoti'"):
        config_pbtxt(dict(manifest, backend="aoti"), "m")
    with pytest.raises(BackendError, match="rebuild with --batch 1,2,8"):
        config_pbtxt(dict(manifest, batch={"min": 2, "opt": 2, "max": 8}), "m")
    with pytest.raises(BackendError, match="GPU only"):
        config_pbtxt(dict(manifest, backend="tensorrt"), "m", kind="cpu")
    with pytest.raises(PackageError, match="without manifest.json"):
        export_triton(open_artifact(tmp_path), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
