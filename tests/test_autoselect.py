"""`backend="auto"`: the fastest candidate is picked, cached per machine and model, reused, and reported."""

from __future__ import annotations

import json

import pytest
import torch

from engine import Predictor, autoselect
from engine.errors import BackendError
from engine.runner import Runner
from tests.artifact_helpers import small_package
from tests.helpers import random_images
from tests.tolerances import RELATIVE, assert_relative


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "seg.htpkg"
    return path, small_package(path, "biomedclip-vit-b16", "seg", size=64)


def _fake_runner(name: str) -> Runner:
    return Runner(run=lambda batch: batch, uses_torch=False, device="cpu", precision=name)


def test_choose_picks_the_fastest_and_caches_it(package, tmp_path, monkeypatch):
    _, reference = package
    speeds = {("reference", "fp32"): 9.0, ("optimized", "fp32"): 4.0, ("onnx", "fp32"): 6.0}
    monkeypatch.setattr(autoselect, "candidates", lambda device, precision: list(speeds))
    loads = []

    def load(name, precision):
        loads.append((name, precision))
        if name == "onnx":
            raise BackendError("onnx is broken in this test")
        return _fake_runner(name)

    cache = tmp_path / "cache.json"
    timer = lambda runner, batch: speeds[runner.precision, "fp32"]  # noqa: E731
    choice = autoselect.choose(reference.cfg, "cpu", "fp32", load, cache=cache, timer=timer)
    assert (choice.backend, choice.precision, choice.measured) == ("optimized", "fp32", True)
    assert choice.runner is not None and "not usable: onnx is broken" in choice.table["onnx/fp32"]
    assert choice.table["reference/fp32"] == 9.0
    stored = json.loads(cache.read_text())
    assert list(stored) == [autoselect.machine_key("cpu")]
    loads.clear()
    again = autoselect.choose(reference.cfg, "cpu", "fp32", load, cache=cache, timer=timer)
    assert (again.backend, again.measured, again.runner) == ("optimized", False, None) and loads == []
    # another model shape is measured anew, next to the first in the same file
    other = autoselect.choose(reference.cfg.__class__(**{**reference.cfg.__dict__, "num_classes": 2,
                                                          "classes": ["a", "b"]}),
                              "cpu", "fp32", load, cache=cache, timer=timer)
    assert other.measured and len(json.loads(cache.read_text())[autoselect.machine_key("cpu")]) == 2


def test_unreadable_cache_is_measured_again(package, tmp_path, monkeypatch):
    _, reference = package
    monkeypatch.setattr(autoselect, "candidates", lambda device, precision: [("reference", "fp32")])
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    choice = autoselect.choose(reference.cfg, "cpu", "fp32", lambda n, p: _fake_runner(n), cache=cache,
                               timer=lambda runner, batch: 1.0)
    assert choice.measured and json.loads(cache.read_text())


def test_candidates_keep_the_precision_asked_for():
    fp32 = autoselect.candidates("cpu", "fp32")
    assert fp32 and all(precision == "fp32" for _, precision in fp32)
    assert set(fp32) <= set(autoselect.candidates("cpu", "auto"))
    with pytest.raises(BackendError, match="no candidate"):
        autoselect.candidates("cpu", "fp8")
    with pytest.raises(BackendError, match="chooses on 'cpu' or 'cuda"):
        autoselect.candidates("tpu", "fp32")


def test_predictor_auto_measures_reports_and_reuses(package, tmp_path, monkeypatch):
    path, reference = package
    monkeypatch.setenv("HT_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autoselect, "candidates", lambda device, precision: [("reference", "fp32"),
                                                                             ("optimized", "fp32")])
    monkeypatch.setattr(autoselect, "REPEATS", 1)
    predictor = Predictor.load(path, backend="auto")
    assert predictor.backend in ("reference", "optimized") and predictor.auto_choice["measured_now"]
    assert predictor.provenance()["auto"]["backend"] == predictor.backend
    assert set(predictor.auto_choice["table_ms"]) == {"reference/fp32", "optimized/fp32"}
    x = random_images(2, 64, seed=4)
    with torch.no_grad():
        expected = reference(x)
    assert_relative(predictor.forward(x), expected, RELATIVE[torch.float32], "auto")
    assert (tmp_path / "cache" / autoselect.CACHE_FILE).is_file()
    again = Predictor.load(path, backend="auto")
    assert again.backend == predictor.backend and not again.auto_choice["measured_now"]
