"""TensorRT: the parts that need no TensorRT (version modes, precisions, profile, timing cache path, engine
compatibility) always run; building and running engines needs TensorRT and a CUDA GPU and skips without them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engine import Predictor
from engine.artifacts import open_artifact
from engine.backends import backend_status
from engine.errors import BackendError
from engine.export.build import build_artifact
from engine.export.manifest import BatchRange
from engine.export.tensorrt import (
    build_mode,
    check_engine_compatible,
    check_precision,
    onnx_precision,
    profile_shapes,
    timing_cache_path,
)
from tests.artifact_helpers import small_package
from tests.helpers import random_images
from tests.tolerances import RELATIVE, assert_relative


def _tensorrt_missing() -> str:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (its wheels come from NVIDIA's index; not installable on CI machines)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return ""


NEEDS_TENSORRT = pytest.mark.skipif(bool(_tensorrt_missing()), reason=_tensorrt_missing() or "ok")


@pytest.mark.parametrize("version,mode", [("10.0.1", "builder_flags"), ("10.13.3.9", "builder_flags"),
                                          ("11.0.0", "strongly_typed"), ("11.1.0.106", "strongly_typed"),
                                          ("12.2", "strongly_typed")])
def test_build_mode_follows_the_major_version(version, mode):
    assert build_mode(version) == mode


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "x.y"])
def test_old_or_unreadable_versions_are_refused(version):
    with pytest.raises(BackendError, match="TensorRT"):
        build_mode(version)


def test_precisions_per_mode():
    assert check_precision("10.9.0", "bf16") == "builder_flags"
    assert check_precision("11.1.0", "fp16") == "strongly_typed"
    with pytest.raises(BackendError, match="strongly typed.*not 'bf16'"):
        check_precision("11.1.0", "bf16")
    assert check_precision("11.1.0", "int8") == "strongly_typed"
    assert check_precision("10.9.0", "int8") == "builder_flags"
    for version in ("10.9.0", "11.1.0"):
        with pytest.raises(BackendError, match="fp8 engines are not offered"):
            check_precision(version, "fp8")
    # Strong typing takes the precision from the graph; builder flags start from the fp32 graph, except int8,
    # which is explicitly quantized (Q/DQ) in both modes.
    assert onnx_precision("strongly_typed", "fp16") == "fp16"
    assert onnx_precision("builder_flags", "fp16") == "fp32"
    assert onnx_precision("builder_flags", "int8") == onnx_precision("strongly_typed", "int8") == "int8"


def test_profile_shapes():
    assert profile_shapes(BatchRange(1, 4, 16), 224) == ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))
    with pytest.raises(BackendError):
        profile_shapes(BatchRange(4, 2, 8), 224)


def test_timing_cache_is_per_gpu_and_version(tmp_path, monkeypatch):
    monkeypatch.setenv("HT_TRT_TIMING_CACHE_DIR", str(tmp_path))
    a = timing_cache_path("NVIDIA H100 80GB HBM3", "9.0", "11.1.0")
    b = timing_cache_path("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
    c = timing_cache_path("NVIDIA A100-SXM4-40GB", "8.0", "11.1.0")
    assert len({a, b, c}) == 3 and all(p.parent == tmp_path for p in (a, b, c))
    assert " " not in a.name and "sm90" in a.name


BUILT = {"tensorrt_version": "11.1.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.mark.parametrize("key,other,message", [
    ("tensorrt_version", "10.13.0", "TensorRT version: built for '11.1.0', this machine has '10.13.0'"),
    ("gpu_name", "NVIDIA A100-SXM4-40GB", "GPU: built for 'NVIDIA H100 80GB HBM3'"),
    ("compute_capability", "8.0", "compute capability: built for '9.0', this machine has '8.0'"),
])
def test_engine_of_another_machine_is_refused(key, other, message):
    check_engine_compatible(BUILT, dict(BUILT))
    with pytest.raises(BackendError, match=message):
        check_engine_compatible(BUILT, dict(BUILT, **{key: other}))


def test_backend_reports_why_it_is_unavailable():
    usable, reason = backend_status("tensorrt", "cpu")
    assert not usable and "CUDA GPUs only" in reason
    if _tensorrt_missing():
        usable, reason = backend_status("tensorrt", "cuda")
        assert not usable and reason


@pytest.mark.skipif(not _tensorrt_missing(), reason="TensorRT and a GPU are present")
def test_build_without_tensorrt_fails_clearly_and_leaves_nothing(tmp_path):
    small_package(tmp_path / "m.htpkg", "biomedclip-vit-b16", "seg", size=48)
    with pytest.raises(BackendError, match="cannot build a TensorRT engine on 'cuda'"):
        build_artifact(tmp_path / "m.htpkg", "tensorrt", "fp16", BatchRange(1, 2, 4), tmp_path / "out", device="cuda")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.htpkg"]


@pytest.fixture(scope="module")
def trt_models(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trt")
    models = {}
    for task, arch, filter_kind in (("seg", "biomedclip-vit-b16", "spectral"), ("cls", "openai-clip-vit-b16", "channel")):
        models[task] = (workdir / f"{task}.htpkg", small_package(workdir / f"{task}.htpkg", arch, task, filter_kind))
    return workdir, models


@pytest.mark.requires_cuda
@NEEDS_TENSORRT
@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_reference(trt_models, task, precision):
    workdir, models = trt_models
    package, reference = models[task]
    built = build_artifact(package, "tensorrt", precision, BatchRange(1, 2, 4), workdir / f"{task}-{precision}",
                           device="cuda")
    artifact = open_artifact(built)
    manifest = artifact.manifest
    assert manifest["tensorrt"]["gpu_name"] and manifest["tensorrt"]["compute_capability"]
    predictor = Predictor.load(artifact.directory, device="cuda")
    tolerance = RELATIVE[torch.float32 if precision == "fp32" else torch.float16]
    for batch in (1, 4):
        x = random_images(batch, reference.cfg.image_size, seed=50 + batch)
        with torch.no_grad():
            expected = reference(x)
        actual = torch.from_numpy(predictor.forward(x.numpy()))
        assert_relative(actual, expected, tolerance, f"tensorrt {precision} {task} batch {batch}")
