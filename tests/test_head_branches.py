"""The head's levels as branches (`engine.optimize.branches`): the branched forward equals the plain one, each
level forks right after the block of its feature and before the next block, the join comes before the head's tail,
and the plain forward is what runs on CPU, when tracing, and unless asked for. The CUDA streams themselves need a
GPU (gpu_check's `optimized_branches` row); here a recording stand-in runs each branch in line."""

from __future__ import annotations

import contextlib

import pytest
import torch

from engine.optimize import branches
from engine.optimize.model import OptimizedHTModel
from tests.helpers import random_images, small_config, small_tensors


class Recorder:
    """Stands in for `StreamBranches`: runs each branch in line and records the order of events."""

    def __init__(self, events: list):
        self.events = events

    @contextlib.contextmanager
    def branch(self, level: int):
        self.events.append(("fork", level))
        yield
        self.events.append(("branch done", level))

    def join(self) -> None:
        self.events.append(("join",))


def traced_model(cfg, events):
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=4)).eval()
    for index, block in enumerate(model.blocks):
        block.register_forward_hook(lambda module, args, out, index=index: events.append(("block", index)))
    tail = model.head.tail

    def recorded_tail(hidden, grid=False):
        events.append(("tail",))
        return tail(hidden, grid)

    model.head.tail = recorded_tail
    return model


@pytest.mark.parametrize("arch,task,extract", [("biomedclip-vit-b16", "seg", [0, 1, 1]),
                                               ("openai-clip-vit-b16", "cls", [0, 1, 2])])
def test_branched_forward_equals_the_plain_one_and_forks_after_each_feature(arch, task, extract):
    cfg = small_config(arch, task, "channel", layers=3, extract_layers=extract, adapter_layers=[0, 1, 2])
    events = []
    model = traced_model(cfg, events)
    images = random_images(2, cfg.image_size, seed=9)
    with torch.inference_mode():
        plain = model(images)
        events.clear()
        branched = model.forward_branched(images, Recorder(events))
    assert torch.equal(branched, plain)
    expected = []
    for index in range(len(model.blocks)):
        expected.append(("block", index))
        for level, layer in enumerate(extract):
            if layer == index:
                expected += [("fork", level), ("branch done", level)]
    assert events == expected + [("join",), ("tail",)]


def test_a_failing_level_still_joins_the_branches(monkeypatch):
    """A capture must end with its branches rejoined: the join runs even when a level's layers raise."""
    cfg = small_config("biomedclip-vit-b16", "seg", "channel", layers=2, extract_layers=[0, 1, 1], adapter_layers=[0])
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=5)).eval()

    def broken(index, feature):
        raise RuntimeError("level failed")

    monkeypatch.setattr(model.head, "level", broken)
    events = []
    with pytest.raises(RuntimeError, match="level failed"), torch.inference_mode():
        model.forward_branched(random_images(1, cfg.image_size, seed=10), Recorder(events))
    assert events == [("fork", 0), ("join",)]


def test_grid_logits_through_branches():
    cfg = small_config("biomedclip-vit-b16", "seg", "channel", layers=2, extract_layers=[0, 1, 1], adapter_layers=[0])
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=5)).eval()
    images = random_images(1, cfg.image_size, seed=10)
    with torch.inference_mode():
        assert torch.equal(model.forward_branched(images, Recorder([]), grid=True), model(images, grid=True))


def test_branches_only_on_cuda_when_asked_and_not_while_tracing(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.delenv("HT_ENGINE_HEAD_BRANCHES", raising=False)
    assert not branches.wanted(cuda) and not branches.wanted(cpu)
    with branches.head_branches(True):
        assert branches.wanted(cuda) and not branches.wanted(cpu)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not branches.wanted(cuda)
        monkeypatch.undo()
    monkeypatch.setenv("HT_ENGINE_HEAD_BRANCHES", "1")
    assert branches.wanted(cuda)
    with branches.head_branches(False):
        assert not branches.wanted(cuda)
    monkeypatch.setenv("HT_ENGINE_HEAD_BRANCHES", "maybe")
    with pytest.raises(ValueError, match="HT_ENGINE_HEAD_BRANCHES"):
        branches.wanted(cuda)


def test_cpu_forward_never_makes_streams(monkeypatch):
    """Asked for on a CPU model: the plain forward runs, no stream is made."""
    def no_streams(*args, **kwargs):
        raise AssertionError("made CUDA streams for a CPU forward")

    monkeypatch.setattr(branches, "StreamBranches", no_streams)
    cfg = small_config("biomedclip-vit-b16", "seg", "channel", layers=2, extract_layers=[0, 1, 1], adapter_layers=[0])
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=6)).eval()
    with branches.head_branches(True), torch.inference_mode():
        assert model(random_images(1, cfg.image_size, seed=11)).shape[0] == 1
