"""OpenVINO IR artifacts: build, manifest, accuracy against the reference (fp32, bf16, int8), device names, refusal
of tampered files, and a torch-free runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ht-engine[openvino]')")

from engine import Predictor, available_backends  # noqa: E402
from engine.backends import openvino as openvino_backend  # noqa: E402
from engine.errors import BackendError, PackageError  # noqa: E402
from engine.export.build import build_artifact  # noqa: E402
from engine.export.manifest import MANIFEST, BatchRange, write_manifest  # noqa: E402
from engine.export.openvino import (  # noqa: E402
    INT8_FLOAT_BLOCKS,
    MODEL_BIN,
    MODEL_XML,
    adapter_projections,
    cpu_features,
    cpu_has_bf16,
    inference_precision,
    mark_precise,
)
from engine.synthetic import synthetic_frame  # noqa: E402
from tests.artifact_helpers import build_artifacts, small_package  # noqa: E402
from tests.helpers import random_images, run_without_torch  # noqa: E402
from tests.tolerances import RELATIVE, assert_relative, relative_error  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CASES = {"seg": ("biomedclip-vit-b16", "seg", 96), "cls": ("openai-clip-vit-b16", "cls", 112)}
BUILDS = [("seg", "fp32"), ("seg", "bf16"), ("seg", "int8"), ("cls", "fp32")]
# bf16 keeps 8 bits of mantissa: the table's bf16 bound on the logits; masks may differ only at near-ties.
BF16_MASK_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def packages(workdir):
    made = {}
    for name, (arch, task, size) in CASES.items():
        path = workdir / f"{name}.htpkg"
        made[name] = (path, small_package(path, arch, task, size=size))
    return made


@pytest.fixture(scope="module")
def artifacts(workdir, packages):
    return build_artifacts(workdir, packages, "openvino", BUILDS)


def _synthetic_batch(predictor, batch: int, seed: int) -> torch.Tensor:
    """Preprocessed synthetic ultrasound frames (what int8 is calibrated on; unseen seeds)."""
    frames = [synthetic_frame(150 + 17 * i, 200 + 23 * i, seed=seed + i)[0] for i in range(batch)]
    return torch.from_numpy(predictor.preprocess(frames))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_matches_reference(packages, artifacts, name, batch):
    _, reference = packages[name]
    predictor = Predictor.load(artifacts[name, "fp32"].directory)
    assert predictor.backend == "openvino" and predictor.runner.precision == "fp32"
    x = random_images(batch, reference.cfg.image_size, seed=20 + batch)
    with torch.no_grad():
        expected = reference(x)
    actual = predictor.forward(x.numpy())
    assert isinstance(actual, np.ndarray) and actual.dtype == np.float32
    assert_relative(torch.from_numpy(actual), expected, RELATIVE[torch.float32], f"openvino fp32 {name} b{batch}")


def test_batch_one_runs_its_own_static_compile_and_agrees_with_the_dynamic_one(artifacts):
    """Batch 1 runs a model compiled for that one shape, other batches the dynamic one: same image, same logits."""
    predictor = Predictor.load(artifacts["seg", "fp32"].directory)
    x = random_images(3, 96, seed=31).numpy()
    together = predictor.forward(x)
    for index in range(3):
        alone = predictor.forward(x[index:index + 1])
        assert_relative(torch.from_numpy(alone[0]), torch.from_numpy(together[index]), RELATIVE[torch.float32],
                        f"openvino fp32 batch 1 vs batch 3, image {index}")


def test_manifest_records_openvino(artifacts):
    manifest = artifacts["seg", "bf16"].manifest
    assert manifest["backend"] == "openvino" and manifest["artifact"] == MODEL_XML
    assert set(manifest["files"]) == {MODEL_XML, MODEL_BIN}
    info = manifest["openvino"]
    assert info["inference_precision_hint"] == "bf16" and info["device"] == "cpu" and info["version"]
    assert manifest["tools"]["openvino"]


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (AVX-512 BF16 or AMX)")
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_is_bounded_and_masks_agree(packages, artifacts, batch):
    _, reference = packages["seg"]
    predictor = Predictor.load(artifacts["seg", "bf16"].directory, precision="bf16")
    x = _synthetic_batch(predictor, batch, seed=500 + batch)
    with torch.no_grad():
        expected = reference(x)
    actual = torch.from_numpy(predictor.forward(x.numpy()))
    assert_relative(actual, expected, RELATIVE[torch.bfloat16], f"openvino bf16 b{batch}")
    assert relative_error(actual, expected) > RELATIVE[torch.float32], "the bf16 hint was not applied"
    agreement = (actual.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= BF16_MASK_AGREEMENT, f"bf16 masks agree on {agreement:.4f} of the pixels"


def test_bf16_refused_without_bf16_units(artifacts, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_has_bf16", lambda: False)
    with pytest.raises(BackendError, match="no bf16 units"):
        Predictor.load(artifacts["seg", "bf16"].directory)


@pytest.mark.parametrize("batch", [1, 3])
def test_int8_is_bounded(packages, artifacts, batch):
    _, reference = packages["seg"]
    predictor = Predictor.load(artifacts["seg", "int8"].directory)
    x = _synthetic_batch(predictor, batch, seed=900 + batch)
    with torch.no_grad():
        expected = reference(x)
    actual = torch.from_numpy(predictor.forward(x.numpy()))
    assert_relative(actual, expected, RELATIVE[torch.int8], f"openvino int8 b{batch}")
    assert relative_error(actual, expected) > RELATIVE[torch.bfloat16] / 3, "an int8 graph cannot be this exact"


@pytest.mark.parametrize(("recorded", "cpu_bf16", "int8_float", "expected"), [
    ("f32", True, "auto", "f32"), ("bf16", True, "auto", "bf16"), ("bf16", False, "auto", "bf16"),
    ("auto", True, "auto", "bf16"), ("auto", False, "auto", "f32"), ("auto", True, "f32", "f32"),
    ("f32", True, "f32", "f32")])
def test_inference_precision_per_recorded_hint(recorded, cpu_bf16, int8_float, expected):
    assert inference_precision(recorded, cpu_bf16, lambda: int8_float) == expected


def test_inference_precision_reads_the_setting_only_for_auto():
    def unreadable():
        raise AssertionError("the int8 setting was read for an artifact that does not need it")

    assert inference_precision("f32", True, unreadable) == "f32"
    assert inference_precision("bf16", True, unreadable) == "bf16"


def test_int8_float_parts_follow_the_setting(artifacts, monkeypatch):
    """The hint each compile gets: int8's float parts in bf16 on a CPU with bf16 units, f32 when the setting says
    so or the CPU has none (each a real compile and a forward)."""
    import openvino

    hints = []

    class RecordingCore(openvino.Core):
        def compile_model(self, model, device, config):
            hints.append(config["INFERENCE_PRECISION_HINT"])
            return super().compile_model(model, device, config)

    monkeypatch.setattr(openvino_backend, "_core", RecordingCore)
    x = random_images(1, 96, seed=3).numpy()
    for int8_float, has_bf16, expected in (("auto", True, "bf16"), ("f32", True, "f32"), ("auto", False, "f32")):
        monkeypatch.setenv("HT_ENGINE_OPENVINO_INT8_FLOAT", int8_float)
        monkeypatch.setattr(openvino_backend, "cpu_has_bf16", lambda value=has_bf16: value)
        hints.clear()
        assert np.isfinite(Predictor.load(artifacts["seg", "int8"].directory).forward(x)).all()
        assert hints and set(hints) == {expected}, (int8_float, has_bf16, hints)
    monkeypatch.setattr(openvino_backend, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("HT_ENGINE_OPENVINO_INT8_FLOAT", "bf16")
    with pytest.raises(ValueError, match="HT_ENGINE_OPENVINO_INT8_FLOAT"):
        Predictor.load(artifacts["seg", "int8"].directory)
    # Not read for other precisions; an int8 artifact built before "auto" records f32 and keeps it.
    assert np.isfinite(Predictor.load(artifacts["seg", "fp32"].directory).forward(x)).all()
    monkeypatch.setenv("HT_ENGINE_OPENVINO_INT8_FLOAT", "auto")
    old = artifacts["seg", "int8"].directory.parent / "int8-recorded-f32"
    shutil.copytree(artifacts["seg", "int8"].directory, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["openvino"]["inference_precision_hint"] = "f32"
    write_manifest(old, manifest)  # as the engine wrote int8 artifacts before "auto"
    hints.clear()
    Predictor.load(old)
    assert set(hints) == {"f32"}


def test_int8_runs_int8_kernels(artifacts):
    """The CPU plugin executes the quantized GEMMs (qkv, projection, fc1, fc2 of each block: docs of
    engine.export.quantize) in int8, not dequantized to f32; the adapters' small GEMMs stay f32."""
    import openvino

    compiled = openvino.Core().compile_model(str(artifacts["seg", "int8"].model_file), "CPU")
    precisions = [node.get_rt_info()["runtimePrecision"].astype(str) for node in compiled.get_runtime_model().get_ops()
                  if node.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul", "Convolution")]
    integer = sum(p in ("i8", "u8") for p in precisions)
    assert integer >= 4 and integer < len(precisions), precisions


def _precise_layers(xml_path: Path) -> set:
    import xml.etree.ElementTree as ElementTree

    return {layer.get("name") for layer in ElementTree.parse(xml_path).getroot().iter("layer")
            if any(attribute.get("name") == "precise" for attribute in layer.iter("attribute"))}


def test_int8_keeps_two_blocks_float_and_marks_the_adapter_projections(packages, artifacts):
    """An OpenVINO int8 artifact: the GEMMs of the first INT8_FLOAT_BLOCKS blocks stay float (fewer FakeQuantize
    nodes than with the ONNX default), and each adapter's three projections (W1's two halves, W2) are marked `precise`,
    with the two biased ones' bias sums: 3 + 2·2 names per adapter, as the manifest records."""
    import openvino

    cfg = packages["seg"][1].cfg
    artifact = artifacts["seg", "int8"]
    info = artifact.manifest["openvino"]
    kept_blocks = max(cfg.extract_layers) + 1
    adapters = sum(index < kept_blocks for index in cfg.adapter_layers)
    assert info["float_blocks"] == INT8_FLOAT_BLOCKS and INT8_FLOAT_BLOCKS < kept_blocks
    assert info["precise_nodes"] == 7 * adapters
    model = openvino.Core().read_model(str(artifact.model_file))
    fake_quantized = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    # activation and weight per quantized GEMM (qkv, proj, fc1, fc2)
    assert len(fake_quantized) == 2 * 4 * (kept_blocks - INT8_FLOAT_BLOCKS)
    precise = _precise_layers(artifact.model_file)
    assert len(precise) == 7 * adapters
    shapes = {op.get_friendly_name(): sorted(op.input_value(1).get_partial_shape().to_shape())
              for op in model.get_ops() if op.get_type_name() == "MatMul"}
    marked_matmuls = [name for name in precise if name in shapes]
    assert len(marked_matmuls) == 3 * adapters
    assert all(shapes[name] == sorted((cfg.width, cfg.bottleneck)) for name in marked_matmuls)
    assert _precise_layers(artifacts["seg", "bf16"].model_file) == set()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (AVX-512 BF16 or AMX): nothing runs bf16")
def test_int8_adapter_projections_run_f32_under_bf16(packages, artifacts):
    """Compiled with the bf16 hint, the marked projections run as f32 FullyConnected nodes, the other float GEMMs bf16:
    the marks survive OpenVINO's bias fusion."""
    import openvino

    cfg = packages["seg"][1].cfg
    kept_blocks = max(cfg.extract_layers) + 1
    adapters = sum(index < kept_blocks for index in cfg.adapter_layers)
    compiled = openvino.Core().compile_model(str(artifacts["seg", "int8"].model_file), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "bf16"})
    by_precision = {}
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        if info["layerType"].astype(str) == "FullyConnected":
            by_precision.setdefault(info["runtimePrecision"].astype(str), []).append(node.get_friendly_name())
    assert len(by_precision.get("f32", [])) == 3 * adapters, by_precision
    assert by_precision.get("bf16") and by_precision.get("i8"), by_precision


def _biased_model():
    """`(x·W + b) + y·V`: an adapter's W1 halves in miniature (the bias after the first MatMul, the sum after it)."""
    import openvino
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([5, 8], np.float32, name="x")
    first = ops.matmul(x, ops.constant(rng.standard_normal((8, 3)).astype(np.float32)), False, False, name="first")
    biased = ops.add(first, ops.constant(rng.standard_normal(3).astype(np.float32)), name="biased")
    second = ops.matmul(x, ops.constant(rng.standard_normal((8, 3)).astype(np.float32)), False, False, name="second")
    total = ops.add(biased, second, name="total")
    return openvino.Model([ops.relu(total)], [x])


def test_adapter_projections_move_the_bias_and_keep_the_result(tmp_path):
    import openvino

    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    core = openvino.Core()
    before = core.compile_model(_biased_model(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    model = _biased_model()
    names = adapter_projections(model, width=8, bottleneck=3)
    assert names == ["first", "first/f32_sum", "first/f32_bias", "second"]
    assert "biased" not in {op.get_friendly_name() for op in model.get_ops()}, "the bias still follows the MatMul"
    after = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert adapter_projections(_biased_model(), width=8, bottleneck=8) == []
    xml = tmp_path / "m.xml"
    openvino.save_model(model, str(xml), compress_to_fp16=False)
    mark_precise(xml, names)
    assert _precise_layers(xml) == set(names)
    mark_precise(xml, names)  # marking twice keeps one attribute per layer (the IR reader refuses two)
    reread = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_array_equal(reread, after)


def test_mark_precise_refuses_unknown_and_ambiguous_names(tmp_path):
    import openvino

    xml = tmp_path / "m.xml"
    openvino.save_model(_biased_model(), str(xml), compress_to_fp16=False)
    original = xml.read_bytes()
    with pytest.raises(BackendError, match="no layers \\['absent'\\]"):
        mark_precise(xml, ["first", "absent"])
    assert xml.read_bytes() == original, "a failed marking rewrote the IR"
    text = original.decode().replace('name="second"', 'name="first"')
    xml.write_text(text)
    with pytest.raises(BackendError, match="two layers are named 'first'"):
        mark_precise(xml, ["first"])


def test_available_on_cpu():
    assert "openvino" in available_backends("cpu")
    assert "openvino" not in available_backends("cuda")


@pytest.mark.parametrize(("device", "name"), [("cpu", "CPU"), ("gpu", "GPU"), ("gpu:1", "GPU.1"), ("npu", "NPU")])
def test_device_names(device, name):
    assert openvino_backend.openvino_device(device) == name


@pytest.mark.parametrize(("device", "message"), [("cuda", "no NVIDIA CUDA device"), ("cpu:1", "runs on 'cpu'"),
                                                 ("gpu:x", "runs on 'cpu'"), ("tpu", "runs on 'cpu'")])
def test_bad_device_names_refused(artifacts, device, message):
    with pytest.raises(BackendError, match=message):
        Predictor.load(artifacts["cls", "fp32"].directory, device=device)


@pytest.mark.parametrize("device", ["gpu", "npu"])
def test_absent_device_refused(artifacts, device):
    import openvino

    present = openvino.Core().available_devices
    if any(name.startswith(device.upper()) for name in present):
        pytest.skip(f"OpenVINO has a {device.upper()} device here ({present})")
    with pytest.raises(BackendError, match=f"no device {device.upper()} here"):
        Predictor.load(artifacts["cls", "fp32"].directory, device=device)


def test_fp16_precision_refused(packages, tmp_path):
    with pytest.raises(BackendError, match="builds precisions"):
        build_artifact(packages["cls"][0], "openvino", "fp16", BatchRange(1, 1, 1), tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()


@pytest.mark.parametrize("file_name", [MODEL_XML, MODEL_BIN])
def test_refuses_tampered_ir(artifacts, tmp_path, file_name):
    target = tmp_path / "copy"
    shutil.copytree(artifacts["cls", "fp32"].directory, target)
    data = bytearray((target / file_name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (target / file_name).write_bytes(bytes(data))
    with pytest.raises(PackageError, match="altered or corrupt"):
        Predictor.load(target)


def test_cpu_features_read_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    features = cpu_features(cpuinfo)
    assert features["avx512_bf16"] and features["avx512_vnni"] and not features["amx_bf16"]
    assert cpu_has_bf16(features) and not any(cpu_features(tmp_path / "absent").values())


def test_no_torch_in_the_openvino_runtime_path(artifacts, tmp_path):
    """A fresh interpreter where importing torch fails loads and runs an OpenVINO artifact, numpy in and out."""
    directory = artifacts["seg", "fp32"].directory
    run_without_torch(f"""import numpy as np
from engine import Predictor, available_backends
assert "openvino" in available_backends("cpu")
predictor = Predictor.load({str(directory)!r}, backend="openvino", device="cpu")
x = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
logits = predictor.forward(x)
assert isinstance(logits, np.ndarray) and logits.shape == (2, 3, 96, 96), logits.shape
frame = np.random.default_rng(1).integers(0, 256, (61, 77), dtype=np.uint8)
assert predictor.predict(frame)[0].mask.shape == (61, 77)
""", tmp_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_openvino_anchor_on_the_reference_model_matches_it(packages, name):
    """The benchmark's CPU anchor (OpenVINO's conversion of the eager reference model) computes the reference."""
    from engine.bench.openvino_anchor import openvino_reference

    path, reference = packages[name]
    anchor = openvino_reference(path, "fp32")
    x = random_images(3, reference.cfg.image_size, seed=40)
    with torch.no_grad():
        expected = reference(x)
    assert_relative(torch.from_numpy(anchor.forward(x.numpy())), expected, RELATIVE[torch.float32],
                    f"openvino anchor {name}")


def test_auto_on_an_artifact_runs_its_own_backend(artifacts):
    predictor = Predictor.load(artifacts["cls", "fp32"].directory, backend="auto", precision="auto")
    assert (predictor.backend, predictor.runner.precision, predictor.auto_choice) == ("openvino", "fp32", None)
