"""The optimized model against the reference at fp32: every arch, task, filter kind, batch 1 and 3."""

import pytest
import torch

from engine.config import ModelConfig
from engine.model import build_reference_model
from engine.optimize.kernels import KERNEL_PROVIDERS, TorchAdapterKernels, get_kernels
from engine.optimize.model import OptimizedHTModel
from engine.weights import random_package_tensors

from .helpers import ALL_ARCHS, random_images, small_config, small_tensors
from .tolerances import RELATIVE, assert_relative

FP32 = RELATIVE[torch.float32]


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
@pytest.mark.parametrize("batch", [1, 3])
def test_optimized_equals_reference_fp32(arch, task, filter_kind, batch):
    cfg = small_config(arch, task, filter_kind)
    tensors = small_tensors(cfg, seed=ALL_ARCHS.index(arch) * 4 + batch)
    images = random_images(batch, cfg.image_size, seed=batch + 10)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        actual = OptimizedHTModel(cfg, tensors).eval()(images)
    assert actual.dtype == torch.float32
    assert_relative(actual, expected, FP32, f"{arch} {task} {filter_kind} batch {batch}")


@pytest.mark.parametrize("extract_layers,adapter_layers", [([0, 2], [1, 2]), ([1], [0, 1, 3]), ([3, 1, 2], [2])])
def test_optimized_other_layer_choices(extract_layers, adapter_layers):
    cfg = small_config("openai-clip-vit-b16", "seg", "spectral", extract_layers=extract_layers,
                       adapter_layers=adapter_layers, image_size=80)
    tensors = small_tensors(cfg, seed=len(extract_layers))
    images = random_images(2, cfg.image_size, seed=4)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        actual = OptimizedHTModel(cfg, tensors).eval()(images)
    assert_relative(actual, expected, FP32, f"extract {extract_layers} adapters {adapter_layers}")


@pytest.mark.parametrize("arch,task", [("biomedclip-vit-b16", "seg"), ("openai-clip-vit-b16", "cls"),
                                       ("metaclip-vit-b16", "cls")])
@pytest.mark.parametrize("batch", [1, 3])
def test_head_reduces_whole_contiguous_features(arch, task, batch):
    """Each head level's reduce is one GEMM on the contiguous block output (CLS row included, dropped after the
    level's MLP), and the seg upsample the CUDA-graph runner applies after its replay is the forward's own."""
    cfg = small_config(arch, task, "channel", image_size=80)  # 5x5 grid
    tensors = small_tensors(cfg, seed=batch + 20)
    images = random_images(batch, cfg.image_size, seed=batch + 21)
    model = OptimizedHTModel(cfg, tensors).eval()
    seen = []
    for reduce in model.head.reduces:
        reduce.register_forward_pre_hook(lambda module, inputs: seen.append((inputs[0].is_contiguous(),
                                                                               tuple(inputs[0].shape))))
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        actual = model(images)
        if task == "seg":
            assert torch.equal(model.logits_from_grid(model(images, grid=True)), actual)
    assert seen[:3] == [(True, (batch, 1 + cfg.grid ** 2, cfg.width))] * 3
    assert_relative(actual, expected, FP32, f"{arch} {task} batch {batch}")


@pytest.mark.slow
@pytest.mark.parametrize("arch,task,filter_kind", [("biomedclip-vit-b16", "seg", "channel"),
                                                   ("openai-clip-vit-b16", "cls", "spectral")])
def test_optimized_equals_reference_full_size(arch, task, filter_kind):
    cfg = ModelConfig.for_arch(arch, task, 3, filter_kind=filter_kind)
    tensors = random_package_tensors(cfg, seed=11, calibrate=False)
    images = random_images(1, cfg.image_size, seed=12)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        actual = OptimizedHTModel(cfg, tensors).eval()(images)
    assert_relative(actual, expected, FP32, f"full-size {arch} {task} {filter_kind}")


def test_kernel_registry():
    assert set(KERNEL_PROVIDERS) == {"torch", "triton", "cuda"}
    assert get_kernels("torch") is TorchAdapterKernels
    assert TorchAdapterKernels.available("cpu") == (True, "")
    from engine.errors import BackendError

    with pytest.raises(BackendError, match="unknown adapter-kernel provider"):
        get_kernels("nope")


def test_optimized_model_exports():
    cfg = small_config("metaclip-vit-b16", "seg", "spectral", image_size=64)
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=2)).eval()
    images = random_images(2, cfg.image_size, seed=3)
    program = torch.export.export(model, (images,))
    with torch.inference_mode():
        assert_relative(program.module()(images), model(images), FP32, "exported program")
