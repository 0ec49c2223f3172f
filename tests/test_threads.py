"""The thread budget (`engine.threads`): one number of inference threads (`HT_ENGINE_THREADS` or the cores this
process may use) given to torch's pool, every ONNX Runtime session and every OpenVINO CPU compiled model, numpy's
OpenBLAS held to one thread, and the torch-free runtimes kept free of torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Predictor
from engine.threads import (
    ORT_INTRA_OP_SPINNING,
    available_cores,
    budget,
    inference_threads,
    limit_numpy_blas,
    onnxruntime_session_options,
    onnxruntime_settings,
    openvino_config,
)
from tests.artifact_helpers import build_artifacts, small_package
from tests.helpers import run_without_torch

REPO = Path(__file__).resolve().parents[1]
THREADS = "HT_ENGINE_THREADS"
# A budget no default gives on the 2-core machines the tests run on, so a pool that ignores it shows. OpenVINO takes
# at most the cores there are, so its tests give it one thread.
ODD_BUDGET = 3


@pytest.fixture
def torch_threads():
    """Restores torch's pool after a test that lets a Predictor size it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("threads")


@pytest.fixture(scope="module")
def package(workdir):
    path = workdir / "seg.htpkg"
    small_package(path, "biomedclip-vit-b16", "seg", size=64, seed=11)
    return path


@pytest.fixture(scope="module")
def onnx_artifact(workdir, package):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ht-engine[runtime]')")
    return build_artifacts(workdir, {"seg": (package,)}, "onnx", [("seg", "fp32")])["seg", "fp32"]


@pytest.fixture(scope="module")
def openvino_artifact(workdir, package):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ht-engine[openvino]')")
    return build_artifacts(workdir, {"seg": (package,)}, "openvino", [("seg", "fp32")])["seg", "fp32"]


def test_default_budget_is_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv(THREADS, raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == cores
    assert inference_threads() == cores
    assert budget()["inference_threads"] == cores and budget()["source"] == "cores"


def test_default_budget_follows_the_affinity_not_the_machine(monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("this OS has no CPU affinity")
    monkeypatch.delenv(THREADS, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert inference_threads() == 1


@pytest.mark.parametrize("text, expected", [("3", 3), (" 1 ", 1), ("16", 16)])
def test_setting_overrides_the_default(monkeypatch, text, expected):
    monkeypatch.setenv(THREADS, text)
    assert inference_threads() == expected
    assert onnxruntime_settings()["intra_op_num_threads"] == expected
    assert openvino_config()["INFERENCE_NUM_THREADS"] == expected
    assert budget()["source"] == THREADS


def test_blank_setting_means_the_default(monkeypatch):
    monkeypatch.setenv(THREADS, "  ")
    assert inference_threads() == available_cores()


@pytest.mark.parametrize("text", ["0", "-2", "2.5", "two", "1e3"])
def test_bad_setting_values_are_refused_by_name(monkeypatch, text):
    monkeypatch.setenv(THREADS, text)
    with pytest.raises(ValueError, match=rf"environment variable {THREADS}={text!r} cannot be read: expected a whole "
                                         r"number of threads, 1 or more"):
        inference_threads()


def test_explicit_threads_win_over_the_budget(monkeypatch):
    monkeypatch.setenv(THREADS, "2")
    assert onnxruntime_settings(5)["intra_op_num_threads"] == 5
    assert openvino_config(5)["INFERENCE_NUM_THREADS"] == 5


def test_onnxruntime_options_carry_the_budget(monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ht-engine[runtime]')")
    import onnxruntime

    monkeypatch.setenv(THREADS, str(ODD_BUDGET))
    options = onnxruntime_session_options()
    assert options.intra_op_num_threads == ODD_BUDGET
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.get_session_config_entry(ORT_INTRA_OP_SPINNING) == "0"


def test_onnx_backend_sessions_run_on_the_budget(monkeypatch, onnx_artifact):
    import onnxruntime

    made = []
    real = onnxruntime.InferenceSession

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    monkeypatch.setenv(THREADS, str(ODD_BUDGET))
    predictor = Predictor.load(onnx_artifact.directory)
    assert len(made) == 1
    options = made[0].get_session_options()
    assert options.intra_op_num_threads == ODD_BUDGET and options.inter_op_num_threads == 1
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.get_session_config_entry(ORT_INTRA_OP_SPINNING) == "0"
    frame = np.random.default_rng(4).integers(0, 256, (45, 71), dtype=np.uint8)
    assert predictor.predict(frame)[0].mask.shape == (45, 71)
    assert predictor.provenance()["threads"]["onnxruntime"]["intra_op_num_threads"] == ODD_BUDGET


class _RecordingCore:
    """An OpenVINO Core that keeps every model it compiles."""

    def __init__(self, core):
        self.core, self.compiled = core, []

    def __getattr__(self, name):
        return getattr(self.core, name)

    def compile_model(self, *args, **kwargs):
        self.compiled.append(self.core.compile_model(*args, **kwargs))
        return self.compiled[-1]


def test_openvino_backend_compiles_on_the_budget(monkeypatch, openvino_artifact):
    import openvino

    from engine.backends import openvino as openvino_backend

    core = _RecordingCore(openvino.Core())
    monkeypatch.setattr(openvino_backend, "_core", lambda: core)
    monkeypatch.setenv(THREADS, "1")
    predictor = Predictor.load(openvino_artifact.directory)
    assert len(core.compiled) == 2, "the dynamic-batch model and the batch-1 one"
    for compiled in core.compiled:
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert int(compiled.get_property("NUM_STREAMS")) == 1
    frame = np.random.default_rng(5).integers(0, 256, (52, 39), dtype=np.uint8)
    assert predictor.predict(frame)[0].mask.shape == (52, 39)


def test_openvino_anchor_compiles_on_the_budget(monkeypatch, package):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ht-engine[openvino]')")
    import openvino

    from engine.bench.openvino_anchor import convert_reference, openvino_reference

    cores, real = [], openvino.Core

    def recording():
        cores.append(_RecordingCore(real()))
        return cores[-1]

    monkeypatch.setattr(openvino, "Core", recording)
    monkeypatch.setenv(THREADS, "1")
    conversion = convert_reference(package)
    explicit = min(2, available_cores())
    openvino_reference(package, "fp32", conversion=conversion)
    openvino_reference(package, "fp32", threads=explicit, conversion=conversion)
    compiled = [model for core in cores for model in core.compiled]
    assert [int(model.get_property("INFERENCE_NUM_THREADS")) for model in compiled] == [1, explicit]
    assert all(int(model.get_property("NUM_STREAMS")) == 1 for model in compiled)


def test_predictor_sizes_torch_s_pool_to_the_budget(monkeypatch, package, torch_threads):
    monkeypatch.setenv(THREADS, "1")
    torch.set_num_threads(2)
    predictor = Predictor.load(package)
    assert torch.get_num_threads() == 1
    assert predictor.provenance()["threads"]["torch"] == 1


def test_numpy_openblas_is_held_to_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="the BLAS limit is applied through threadpoolctl")
    limit_numpy_blas()
    np.ones((64, 64), dtype=np.float32) @ np.ones((64, 64), dtype=np.float32)  # OpenBLAS loaded and used
    openblas = [pool for pool in threadpoolctl.threadpool_info() if pool["internal_api"] == "openblas"]
    if not openblas:
        pytest.skip("this numpy is not built on OpenBLAS: nothing to limit")
    assert all(pool["num_threads"] == 1 for pool in openblas), openblas
    assert all(threads == 1 for key, threads in budget()["pools"].items() if key.startswith("openblas:"))


def test_budget_fits_the_bench_schema(monkeypatch):
    jsonschema = pytest.importorskip("jsonschema", reason="the bench schema tests need jsonschema")
    schema = json.loads((REPO / "engine" / "data" / "bench_schema.json").read_text())
    threads_schema = schema["properties"]["settings"]["properties"]["threads"]
    monkeypatch.setenv(THREADS, str(ODD_BUDGET))
    jsonschema.validate(json.loads(json.dumps(budget())), threads_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**budget(), "inference_threads": 0}, threads_schema)


def test_torch_free_runtime_applies_the_budget_without_importing_torch(onnx_artifact, openvino_artifact, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv(THREADS, str(ODD_BUDGET))
    run_without_torch(f"""import numpy as np
from engine import Predictor
frame = np.random.default_rng(2).integers(0, 256, (33, 47), dtype=np.uint8)
for directory in ({str(onnx_artifact.directory)!r}, {str(openvino_artifact.directory)!r}):
    predictor = Predictor.load(directory)
    assert predictor.predict(frame)[0].mask.shape == (33, 47)
    threads = predictor.provenance()["threads"]
    assert threads["torch"] is None and threads["inference_threads"] == {ODD_BUDGET}, threads
""", tmp_path)


def test_threads_benchmark_script_measures_the_variants_it_names(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ht-engine[runtime]')")
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ht-engine[openvino]')")
    from benchmarks import bench_threads

    out = tmp_path / "threads.json"
    assert bench_threads.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (model,) = report["models"]
    assert report["quick"] and model["model"] == "test" and model["image_size"] == 96
    variants = [f"onnx {name}" for name in bench_threads.ORT_VARIANTS] + [
        f"openvino {name}" for name in bench_threads.OV_VARIANTS]
    expected = {f"after-torch {v} {entry}" for v in variants for entry in ("predict", "torch-after")}
    expected |= {f"stream {v} {entry}" for v in variants for entry in ("infer", "pre+post thread", "step")}
    assert set(model["entries"]) == expected | {"torch-alone torch"}
    assert all(len(samples) == 3 and min(samples) > 0 for samples in model["samples_ms"].values())
    assert {key: props["ENABLE_CPU_PINNING"] for key, props in model["openvino_compiled"].items()} == {
        "openvino pinned": "True", "openvino unpinned": "False"}
    others = len(bench_threads.ORT_VARIANTS) - 1 + len(bench_threads.OV_VARIANTS) - 1
    assert len(model["ratios_to_default"]) == others * 5, "every entry of every variant but the library defaults"
    assert all(ratio["median"] > 0 and ratio["rounds"] == 3 for ratio in model["ratios_to_default"].values())
    assert "after-torch onnx no-spin predict / spin" in capsys.readouterr().out
