"""The adapter-kernel providers: every one implements the `AdapterKernels` protocol, the model takes an instance, and
htkernels' own errors reach engine callers as the engine's types (`kernel_errors`)."""

import inspect

import pytest
import torch

from engine.errors import BackendError, InputError
from engine.export.graph import ExportAdapterKernels, deployable_model
from engine.optimize.cpu_kernels import CpuAdapterKernels
from engine.optimize.cuda_provider import CudaAdapterKernels
from engine.optimize.kernels import (
    KERNEL_PROVIDERS,
    AdapterKernels,
    TorchAdapterKernels,
    get_kernels,
    kernel_errors,
    kernel_provider,
)
from engine.optimize.model import OptimizedHTModel
from engine.optimize.triton_provider import TritonAdapterKernels
from htkernels.errors import KernelError, KernelInputError, KernelUnavailableError

from .helpers import small_config, small_tensors

PROTOCOL_METHODS = sorted(name for name, value in vars(AdapterKernels).items()
                          if not name.startswith("_") and callable(value))


def _parameters(method) -> list:
    return [(parameter.name, parameter.kind, parameter.default)
            for parameter in inspect.signature(method).parameters.values()]


def protocol_mismatches(provider: type) -> list:
    """What in `provider` (instantiated, as the model holds it) differs from the protocol: missing methods, or
    parameter lists (names, kinds, defaults) other than the protocol's without `self`."""
    instance = provider()
    found = []
    for name in PROTOCOL_METHODS:
        method = getattr(instance, name, None)
        if not callable(method):
            found.append(f"{provider.__name__}.{name} is missing")
            continue
        expected = _parameters(getattr(AdapterKernels, name))[1:]
        if _parameters(method) != expected:
            found.append(f"{provider.__name__}.{name}{inspect.signature(method)} differs from the protocol's")
    return found


def test_the_protocol_names_every_op():
    assert PROTOCOL_METHODS == sorted(["available", "adapter_in", "adapter_spatial", "adapter_out",
                                       "adapter_spatial_out", "adapter", "residual_adapter", "norm_linear", "linear_act",
                                       "linear_residual",
                                       "head_logits", "attention", "patch_embed", "preprocess"])


@pytest.mark.parametrize("provider", [get_kernels(name) for name in KERNEL_PROVIDERS]
                         + [ExportAdapterKernels, CpuAdapterKernels], ids=list(KERNEL_PROVIDERS) + ["export", "cpu"])
def test_every_provider_implements_the_protocol(provider):
    assert protocol_mismatches(provider) == []


def test_the_protocol_check_finds_a_mismatch():
    class Renamed(TorchAdapterKernels):
        @staticmethod
        def adapter_out(g2d, w2, b2, residual):
            return residual

    class Missing:
        available = TorchAdapterKernels.available

    assert protocol_mismatches(Renamed) == [f"Renamed.adapter_out{inspect.signature(Renamed.adapter_out)} differs "
                                            "from the protocol's"]
    assert len(protocol_mismatches(Missing)) == len(PROTOCOL_METHODS) - 1


def test_the_model_runs_the_provider_instance_it_is_given():
    cfg = small_config("openai-clip-vit-b16", "seg", "channel")
    tensors = small_tensors(cfg, seed=4)
    provider = kernel_provider("torch")
    model = OptimizedHTModel(cfg, tensors, kernels=provider)
    assert model.kernels is provider and all(block.kernels is provider for block in model.blocks)
    assert isinstance(OptimizedHTModel(cfg, tensors).kernels, TorchAdapterKernels)
    exported = deployable_model(cfg, tensors)
    assert {type(block.kernels) for block in exported.blocks} == {ExportAdapterKernels}


def test_kernel_errors_maps_htkernels_errors_to_the_engine_types():
    with pytest.raises(InputError, match="x has shape") as raised, kernel_errors():
        raise KernelInputError("x has shape [2], expected [3]")
    assert isinstance(raised.value.__cause__, KernelInputError)
    with pytest.raises(BackendError, match="not built") as raised, kernel_errors():
        raise KernelUnavailableError("htkernels._C is not built")
    assert isinstance(raised.value.__cause__, KernelUnavailableError)
    with pytest.raises(BackendError, match="other"), kernel_errors():
        raise KernelError("other")
    with pytest.raises(ZeroDivisionError), kernel_errors():  # not htkernels': unchanged
        raise ZeroDivisionError

    @kernel_errors()
    def launch():
        raise KernelInputError("bad tuning")

    with pytest.raises(InputError, match="bad tuning"):
        launch()


def test_providers_raise_engine_errors_for_bad_kernel_inputs():
    x = torch.randn(4, 16)
    w = torch.randn(8, 16)
    with pytest.raises(InputError, match="w_raw"):  # under TRITON_INTERPRET (tests/conftest.py) the launcher runs
        TritonAdapterKernels.adapter_in(x, w, w[:, :15], torch.randn(8), 1e-5)
    frames = torch.randint(0, 256, (1, 10, 12), dtype=torch.uint8)
    weights = torch.zeros(8, 10, dtype=torch.int32), torch.zeros(8, 12, dtype=torch.int32)
    with pytest.raises(InputError, match="frames: the CUDA kernels need CUDA tensors"):
        CudaAdapterKernels().preprocess(frames, *weights, 1 / 255, torch.float32)
