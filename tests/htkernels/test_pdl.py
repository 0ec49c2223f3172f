"""Programmatic dependent launch (`HTK_PDL`, `programmatic_launch`): when it is asked for, where it applies, and that
every Triton launcher hands it to its kernels. The kernels' PDL variants need a Hopper GPU to run; that they wait
for their predecessor (`griddepcontrol.wait`) and release their successor is checked in their sm_90 PTX by
`compile_targets.py`, and with PDL off they are the kernels every other test runs."""

import pytest
import torch

from htkernels import (
    _triton,
    adapter_in,
    adapter_out,
    adapter_spatial,
    head_logits,
    linear_act,
    norm_linear,
    patch_embed,
    preprocess,
    residual_adapter,
)
from htkernels.testing import adapter_inputs

ON = {"PDL": True, "launch_pdl": True}
OFF = {"PDL": False}
CUDA = torch.device("cuda", 0)


@pytest.fixture
def compiled_hopper(monkeypatch):
    """As on a Hopper GPU with compiled kernels: not interpreting, capability 9.0 (nothing is launched)."""
    monkeypatch.setattr(_triton, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_off_unless_asked_for(compiled_hopper, monkeypatch):
    monkeypatch.delenv("HTK_PDL", raising=False)
    assert _triton.pdl_options(CUDA) == OFF
    monkeypatch.setenv("HTK_PDL", "1")
    assert _triton.pdl_options(CUDA) == ON


def test_only_compiled_on_hopper_or_newer(compiled_hopper, monkeypatch):
    monkeypatch.setenv("HTK_PDL", "1")
    assert _triton.pdl_options(torch.device("cpu")) == OFF
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert _triton.pdl_options(CUDA) == OFF
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert _triton.pdl_options(CUDA) == ON
    monkeypatch.setattr(_triton, "interpreting", lambda: True)
    assert _triton.pdl_options(CUDA) == OFF


def test_the_context_overrides_the_setting_and_ends_with_its_block(compiled_hopper, monkeypatch):
    monkeypatch.setenv("HTK_PDL", "0")
    with _triton.programmatic_launch(True):
        assert _triton.pdl_options(CUDA) == ON
        with _triton.programmatic_launch(False):
            assert _triton.pdl_options(CUDA) == OFF
        assert _triton.pdl_options(CUDA) == ON
    assert _triton.pdl_options(CUDA) == OFF
    monkeypatch.setenv("HTK_PDL", "1")
    with _triton.programmatic_launch(False):
        assert _triton.pdl_options(CUDA) == OFF


class Recorder:
    """Stands in for a Triton kernel: records the keywords of each launch, launches nothing."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(kwargs)


def launch_cases():
    def spatial():
        return adapter_spatial.adapter_spatial_triton(*adapter_inputs("adapter_spatial", 1, torch.float32, "cpu", 32,
                                                                      16, 5, spectral=True))

    frames = torch.zeros(1, 12, 10, dtype=torch.uint8)
    row, col = torch.zeros(8, 12, dtype=torch.int32), torch.zeros(8, 10, dtype=torch.int32)
    row[:, 0] = col[:, 0] = 1 << 22
    embed = (torch.rand(1, 3, 16, 16), torch.randn(8, 48), None, torch.randn(1, 1, 8), torch.randn(1, 16, 8), 4)
    return {
        "adapter_in": (adapter_in, ["_adapter_in_kernel"],
                       lambda: adapter_in.adapter_in_triton(*adapter_inputs("adapter_in", 1, torch.float32, "cpu", 32,
                                                                            16, 3))),
        "adapter_out": (adapter_out, ["_adapter_out_kernel"],
                        lambda: adapter_out.adapter_out_triton(*adapter_inputs("adapter_out", 1, torch.float32, "cpu",
                                                                               32, 16, 3), tuning={"impl": "triton"})),
        "adapter_spatial": (adapter_spatial, ["_circular_filter_kernel", "_adapter_spatial_kernel"], spatial),
        "head_logits": (head_logits, ["_head_logits_kernel"],
                        lambda: head_logits.head_logits_triton([torch.randn(1, 10, 16), torch.randn(1, 10, 8)],
                                                               torch.randn(2, 24), torch.randn(2), 3, 3,
                                                               tuning={"impl": "triton"})),
        "linear_act": (linear_act, ["_linear_act_kernel"],
                       lambda: linear_act.linear_act_triton(*adapter_inputs("linear_act", 1, torch.float32, "cpu", 32,
                                                                            16, 3), tuning={"impl": "triton"})),
        "norm_linear": (norm_linear, ["_norm_linear_kernel"],
                        lambda: norm_linear.norm_linear_triton(*adapter_inputs("norm_linear", 1, torch.float32, "cpu",
                                                                               32, 16, 3), tuning={"impl": "triton"})),
        "patch_embed": (patch_embed, ["_patch_embed_kernel"],
                        lambda: patch_embed.patch_embed_triton(*embed, tuning={"impl": "triton"})),
        "residual_adapter": (residual_adapter, ["_residual_adapter_in_kernel"],
                             lambda: residual_adapter.fused_residual_adapter_in(
                                 torch.randn(10, 24), torch.randn(32, 24), torch.randn(32), torch.randn(10, 32),
                                 torch.randn(16, 32), torch.randn(16, 32), torch.randn(16), 1e-5, 5,
                                 residual_adapter.candidates(10)[1])),
        "preprocess": (preprocess, ["_preprocess_kernel"],
                       lambda: preprocess.preprocess_triton(frames, row, col, 1.0)),
    }


@pytest.mark.parametrize("name", sorted(launch_cases()))
@pytest.mark.parametrize("options", [ON, OFF], ids=["pdl", "no-pdl"])
def test_every_launcher_hands_the_launch_options_to_its_kernels(monkeypatch, name, options):
    module, kernels, call = launch_cases()[name]
    recorders = {kernel: Recorder() for kernel in kernels}
    for kernel, recorder in recorders.items():
        monkeypatch.setattr(module, kernel, recorder)
    monkeypatch.setattr(module, "pdl_options", lambda device: dict(options))
    call()
    for kernel, recorder in recorders.items():
        assert recorder.launches, f"{name}: {kernel} was not launched"
        for kwargs in recorder.launches:
            assert {key: kwargs.get(key) for key in ("PDL", "launch_pdl")} == {
                "PDL": options["PDL"], "launch_pdl": options.get("launch_pdl")}, (name, kernel)


def test_off_on_rocm_and_with_a_triton_without_grid_dependency_control(compiled_hopper, monkeypatch):
    monkeypatch.setenv("HTK_PDL", "1")
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert _triton.pdl_options(CUDA) == OFF
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(_triton, "gdc_wait", None)
    assert _triton.pdl_options(CUDA) == OFF
