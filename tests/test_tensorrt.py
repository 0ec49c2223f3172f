"""TensorRT: the parts that need no TensorRT (version modes, precisions, profile, timing cache path, engine
compatibility) always run; building and running engines needs TensorRT and a CUDA GPU and skips without them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from engine import Predictor
from engine.artifacts import open_artifact
from engine.backends import backend_status
from engine.backends import tensorrt as tensorrt_backend
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
from tests.fake_tensorrt import CLASSES, MIB, FakeCudart, FakeTensorRT, expected_output, fake_artifact, patch_tensorrt
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


# ---------------------------------------------------------------- the runner on fakes (tests/fake_tensorrt.py)

def _images(batch: int, size: int = 16, seed: int = 0):
    return np.random.default_rng(seed).random((batch, 3, size, size - 3), dtype=np.float32)


def _phases(cudart: FakeCudart, batch, compute_ms: float) -> tuple:
    """The device time the fakes spend in each phase of one run of `batch` (H2D, compute, D2H)."""
    out_bytes = batch.nbytes * CLASSES // batch.shape[1]
    return (cudart.cost_per_mib["H2D"] * batch.nbytes / MIB, compute_ms, cudart.cost_per_mib["D2H"] * out_bytes / MIB)


def test_untimed_run_copies_in_executes_copies_out_and_records_no_event():
    cudart = FakeCudart()
    engine = tensorrt_backend._Engine(FakeTensorRT(cudart), cudart, b"plan", 0)
    for batch in (_images(2), _images(3, seed=1), _images(1, seed=2)):  # the buffers grow, then are reused
        assert (engine.run(batch) == expected_output(batch)).all()
    assert cudart.events == [] and engine.events is None
    assert cudart.log == ["copy H2D", "execute", "copy D2H", "sync"] * 3
    assert len(cudart.memory) == 2  # one device buffer per binding, grown for batch 3 and kept for batch 1


def test_timed_run_brackets_each_phase_with_events_on_the_runner_stream():
    cudart = FakeCudart(h2d_ms_per_mib=3.0, d2h_ms_per_mib=0.75, compute_ms=(7.0, 9.5))
    engine = tensorrt_backend._Engine(FakeTensorRT(cudart), cudart, b"plan", 0)
    batch = _images(2)
    output, phases = engine.run_timed(batch)
    assert (output == expected_output(batch)).all()
    assert phases == pytest.approx(_phases(cudart, batch, 7.0), rel=1e-12)
    assert cudart.log == ["record", "copy H2D", "record", "record", "execute", "record", "record", "copy D2H",
                          "record", "sync"]
    assert {event.stream for event in cudart.events} == {engine.stream} and engine.stream != 0
    larger = _images(5, seed=3)
    output, phases = engine.run_timed(larger)  # the same six events, recorded again
    assert (output == expected_output(larger)).all() and len(cudart.events) == 6
    assert phases == pytest.approx(_phases(cudart, larger, 9.5), rel=1e-12)
    cudart.log.clear()
    engine.run(batch)  # timing off again: no event is recorded
    assert cudart.log == ["copy H2D", "execute", "copy D2H", "sync"]


def test_a_failed_execution_is_a_backend_error_timed_or_not():
    cudart = FakeCudart()
    engine = tensorrt_backend._Engine(FakeTensorRT(cudart, fail=True), cudart, b"plan", 0)
    for run in (engine.run, engine.run_timed):
        with pytest.raises(BackendError, match="TensorRT execution failed"):
            run(_images(1))


def test_loaded_runner_offers_the_split_on_cuda_events(tmp_path, monkeypatch):
    cudart = FakeCudart(compute_ms=(4.0,))
    patch_tensorrt(monkeypatch, cudart)
    runner = tensorrt_backend.load(fake_artifact(tmp_path), "cuda:0", "fp16")
    assert runner.split_timer == "cuda_events" and not runner.uses_torch and runner.max_batch == 4
    batch = _images(2, seed=4)
    plain = runner.run(batch)
    assert plain.dtype == np.float32 and (plain == expected_output(batch)).all() and cudart.events == []
    output, phases = runner.run_split(batch)
    assert (output == plain).all() and phases == pytest.approx(_phases(cudart, batch, 4.0), rel=1e-12)
