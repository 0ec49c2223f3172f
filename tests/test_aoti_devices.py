"""The graph a GPU AOTInductor package is compiled from holds tensors on the GPU alone: exported here for the
`meta` device (no GPU needed), every value, weight and constant must be on it. A CPU tensor there (the spectral
filter's DFT matrices were once built on the CPU inside the graph) makes a mixed-device package, and `build_aoti`
refuses one before compiling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.errors import BackendError
from engine.export import aoti
from engine.export.build import build_artifact
from engine.export.frame_graph import frame_model
from engine.export.graph import deployable_model
from engine.export.manifest import BatchRange, FrameSpec
from engine.package import load_package
from tests.artifact_helpers import small_package
from tests.helpers import small_config, small_tensors

META = torch.device("meta")


@pytest.mark.parametrize("arch,task,filter_kind", [("biomedclip-vit-b16", "seg", "spectral"),
                                                   ("openai-clip-vit-b16", "cls", "channel")])
def test_exported_graph_for_another_device_holds_no_cpu_tensor(arch, task, filter_kind):
    cfg = small_config(arch, task, filter_kind)
    program = aoti.export_program(deployable_model(cfg, small_tensors(cfg, seed=1)), cfg, BatchRange(1, 2, 4), META)
    assert aoti.foreign_tensors(program, "meta") == []


def test_frame_graph_for_another_device_holds_no_cpu_tensor(tmp_path):
    small_package(tmp_path / "m.htpkg", "biomedclip-vit-b16", "seg", "spectral", size=64)
    package = load_package(tmp_path / "m.htpkg")
    frame = FrameSpec(120, 160, 3)
    program = aoti.export_program(frame_model(package, frame), package.config, BatchRange(1, 2, 4), META, frame)
    assert aoti.foreign_tensors(program, "meta") == []


class _CpuConstant(torch.nn.Module):
    def forward(self, x):
        # A factory without a device (the CPU), moved in the graph: how the DFT matrices once entered it.
        return x + torch.arange(x.shape[-1], dtype=x.dtype).to(x.device)


def _mixed_program():
    return torch.export.export(_CpuConstant(), (torch.zeros(2, 3, device=META),))


def test_foreign_tensors_names_a_cpu_tensor_in_a_meta_graph():
    found = aoti.foreign_tensors(_mixed_program(), "meta")
    assert any("arange" in entry for entry in found), found


def test_foreign_tensors_looks_into_multi_output_nodes_and_constants():
    node = SimpleNamespace(op="call_function", name="split", target="aten.split", meta={"val": (
        torch.zeros(1, device=META), [torch.zeros(1)])})
    program = SimpleNamespace(graph=SimpleNamespace(nodes=[node]), state_dict={"w": torch.zeros(1, device=META)},
                              constants={"c": torch.zeros(1)})
    assert aoti.foreign_tensors(program, "meta") == ["call_function split (aten.split)", "constant c"]


def test_build_refuses_a_mixed_device_graph_before_compiling(tmp_path, monkeypatch):
    small_package(tmp_path / "m.htpkg", "openai-clip-vit-b16", "cls", "channel", size=64)
    monkeypatch.setattr(aoti, "export_program", lambda *args, **kwargs: _mixed_program())

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled a mixed-device graph")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    out = tmp_path / "out"
    with pytest.raises(BackendError, match="tensors on another device"):
        build_artifact(tmp_path / "m.htpkg", "aoti", "fp32", BatchRange(1, 1, 1), out)
    assert not out.exists()
