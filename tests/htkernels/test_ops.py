"""The `torch.library` ops: registration, fake (meta) kernels, `opcheck`, and the CUDA path end to end."""

import numpy as np
import pytest
import torch

import htkernels.adapter  # noqa: F401  (registers htkernels::adapter)
import htkernels.adapter_in  # noqa: F401  (registers htkernels::adapter_in)
import htkernels.adapter_out  # noqa: F401
import htkernels.adapter_spatial  # noqa: F401  (also htkernels::adapter_spatial_out)
import htkernels.attention  # noqa: F401
import htkernels.head_logits  # noqa: F401
import htkernels.linear_act  # noqa: F401
import htkernels.norm_linear  # noqa: F401
import htkernels.patch_embed  # noqa: F401
import htkernels.preprocess  # noqa: F401
import htkernels.residual_adapter  # noqa: F401
from engine.preprocess import pil_resize_matrix

from ..tolerances import RELATIVE, assert_relative
from .test_adapter_spatial import spatial_args

requires_cuda = pytest.mark.requires_cuda
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton op runs on CUDA)")


def op_cases(device):
    """The same seeded inputs on any device (every tensor drawn from one CPU generator, then moved)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 48, generator=gen).to(device)
    cases = {
        "adapter_in": (x, torch.randn(16, 48, generator=gen).to(device), torch.randn(16, 48, generator=gen).to(device),
                       torch.randn(16, generator=gen).to(device), 1e-5),
        "adapter_out": (torch.randn(9, 16, generator=gen).to(device), torch.randn(48, 16, generator=gen).to(device),
                        torch.randn(48, generator=gen).to(device), x),
        "linear_act": (x, torch.randn(40, 48, generator=gen).to(device), torch.randn(40, generator=gen).to(device),
                       "gelu"),
        "norm_linear": (x, 1.0 + 0.2 * torch.randn(48, generator=gen).to(device),
                        torch.randn(48, generator=gen).to(device), torch.randn(40, 48, generator=gen).to(device),
                        torch.randn(40, generator=gen).to(device), 1e-5, "quick_gelu"),
    }
    for name, spectral in (("adapter_spatial", False), ("adapter_spatial_spectral", True)):
        z, filt, weights = spatial_args(2, 3, 5, 16, spectral, seed=1)
        cases[name] = (z.to(device), 3, 5, None if filt is None else filt.to(device),
                       *[w.to(device) for w in weights.values()])
        cases[name.replace("spatial", "spatial_out")] = cases[name] + (
            torch.randn(48, 16, generator=gen).to(device), torch.randn(48, generator=gen).to(device),
            torch.randn(2, 16, 48, generator=gen).to(device))
        x3d = torch.randn(2, 16, 48, generator=gen).to(device)
        cases["adapter_spectral" if spectral else "adapter"] = (
            x3d, 3, 5, torch.randn(16, 48, generator=gen).to(device), torch.randn(16, 48, generator=gen).to(device),
            torch.randn(16, generator=gen).to(device), 1e-5, *cases[name][3:],
            torch.randn(48, 16, generator=gen).to(device), torch.randn(48, generator=gen).to(device))
        whole = cases["adapter_spectral" if spectral else "adapter"]
        cases["residual_adapter_spectral" if spectral else "residual_adapter"] = (
            torch.randn(2, 16, 40, generator=gen).to(device), 0.2 * torch.randn(48, 40, generator=gen).to(device),
            torch.randn(48, generator=gen).to(device)) + whole
    cases["head_logits"] = ([torch.randn(2, 16, width, generator=gen).to(device) for width in (24, 40)],
                            torch.randn(3, 64, generator=gen).to(device), torch.randn(3, generator=gen).to(device), 3, 5)
    cases["attention"] = (torch.randn(2, 9, 3 * 48, generator=gen).to(device), 4)
    cases["patch_embed"] = (torch.rand(2, 3, 16, 16, generator=gen).to(device),
                            torch.randn(24, 48, generator=gen).to(device), torch.randn(24, generator=gen).to(device),
                            torch.randn(1, 1, 24, generator=gen).to(device),
                            torch.randn(1, 16, 24, generator=gen).to(device), 4)
    frames = torch.randint(0, 256, (2, 13, 17, 3), dtype=torch.uint8, generator=gen).to(device)
    rows = torch.from_numpy(np.array(pil_resize_matrix(13, 8))).to(device=device, dtype=torch.int32)
    cols = torch.from_numpy(np.array(pil_resize_matrix(17, 8))).to(device=device, dtype=torch.int32)
    cases["preprocess"] = (frames, rows, cols, 1.0 / 255.0, torch.float32)
    return cases


OP_CASES = ["adapter", "adapter_spectral", "adapter_in", "adapter_out", "adapter_spatial", "adapter_spatial_spectral",
            "adapter_spatial_out", "adapter_spatial_out_spectral", "attention", "head_logits", "linear_act", "norm_linear", "patch_embed",
            "preprocess", "residual_adapter", "residual_adapter_spectral"]


def op_of(case: str):
    return getattr(torch.ops.htkernels, case.replace("_spectral", ""))


@pytest.mark.parametrize("case", OP_CASES)
def test_opcheck_cpu(case):
    torch.library.opcheck(op_of(case), op_cases("cpu")[case])


def test_ops_compile_and_export_on_cpu():
    args = op_cases("cpu")["adapter_in"]

    def f(x, w_norm, w_raw, bias):
        return torch.ops.htkernels.adapter_in(x, w_norm, w_raw, bias, 1e-5) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(*args[:4]), f(*args[:4]))

    class M(torch.nn.Module):
        def forward(self, x, w_norm, w_raw, bias):
            return f(x, w_norm, w_raw, bias)

    exported = torch.export.export(M(), args[:4])
    assert "htkernels.adapter_in" in str(exported.graph)


@requires_cuda
@cuda_only
@pytest.mark.parametrize("case", OP_CASES)
def test_cuda_op_matches_cpu_op_and_opcheck(case):
    cuda_args = op_cases("cuda")[case]
    cpu_args = op_cases("cpu")[case]
    actual = op_of(case)(*cuda_args)
    expected = op_of(case)(*cpu_args)
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"{case} cuda vs cpu")
    torch.library.opcheck(op_of(case), cuda_args)


@requires_cuda
@cuda_only
def test_cuda_runner_graphs_per_batch_size():
    from engine.optimize.cuda_runner import make_cuda_runner
    from engine.optimize.kernels import kernel_provider
    from engine.optimize.model import OptimizedHTModel

    from ..helpers import random_images, small_config, small_tensors

    cfg = small_config("biomedclip-vit-b16", "seg", "channel")
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=1), kernels=kernel_provider("triton")).eval().cuda()
    runner = make_cuda_runner(model, "cuda", "fp32")
    for batch in (1, 3, 1, 3):
        images = random_images(batch, cfg.image_size, seed=batch).cuda()
        with torch.inference_mode():
            expected = model(images)
        actual = runner.run(images)
        assert_relative(actual, expected, RELATIVE[torch.float32], f"graph batch {batch}")
    assert len(runner.run.graphs) == 2


@requires_cuda
@cuda_only
def test_cuda_runner_upsamples_seg_logits_after_the_replay():
    """Seg: `run` replays the graph of `run_grid` (one graph per batch size for both) and upsamples after it into a new
    tensor: equal to the eager model, and not overwritten by the next replay."""
    from engine.optimize.cuda_runner import make_cuda_runner
    from engine.optimize.kernels import kernel_provider
    from engine.optimize.model import OptimizedHTModel

    from ..helpers import random_images, small_config, small_tensors

    cfg = small_config("biomedclip-vit-b16", "seg", "channel")
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=2), kernels=kernel_provider("triton")).eval().cuda()
    runner = make_cuda_runner(model, "cuda", "fp32")
    first_images, second_images = (random_images(2, cfg.image_size, seed=seed).cuda() for seed in (5, 6))
    first = runner.run(first_images)
    kept = first.clone()
    grid = runner.run_grid(second_images)
    second = runner.run(second_images)
    with torch.inference_mode():
        expected_first, expected_second = model(first_images), model(second_images)
        assert torch.equal(model.logits_from_grid(grid), second)
    assert torch.equal(first, kept), "the first output was overwritten by a later replay"
    assert_relative(first, expected_first, RELATIVE[torch.float32], "graph seg batch 2")
    assert_relative(second, expected_second, RELATIVE[torch.float32], "graph seg batch 2, second input")
    assert list(runner.run.graphs) == [("grid", 2, 3, cfg.image_size, cfg.image_size)]


@requires_cuda
@cuda_only
def test_cuda_runner_tunes_in_its_warmup(monkeypatch):
    """With the launch tuner on (as users run it): the warm-up on a side stream tunes every op, the capture reuses
    the choices, and the replayed forward equals the eager model."""
    import htkernels._tune as tune
    from engine.optimize.cuda_runner import make_cuda_runner
    from engine.optimize.kernels import kernel_provider
    from engine.optimize.model import OptimizedHTModel
    from htkernels import envs

    from ..helpers import random_images, small_config, small_tensors

    monkeypatch.setenv(envs.HTK_TUNE.name, "1")
    tuner = tune.LaunchTuner()
    monkeypatch.setattr(tune, "TUNER", tuner)
    cfg = small_config("openai-clip-vit-b16", "seg", "channel")
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=3), kernels=kernel_provider("triton")).eval().cuda()
    runner = make_cuda_runner(model, "cuda", "fp32")
    images = random_images(2, cfg.image_size, seed=6).cuda()
    actual = runner.run(images)
    with torch.inference_mode():
        expected = model(images)
    assert_relative(actual, expected, RELATIVE[torch.float32], "tuned graph vs eager")
    tuned = {choice["op"] for choice in tuner.report()}
    assert tuned == {"adapter_in", "adapter_spatial", "adapter_out", "norm_linear", "linear_act"}, tuned
    assert all(isinstance(row.get("us"), float) for choice in tuner.report() for row in choice["measured"])


@requires_cuda
@cuda_only
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_optimized_backend_on_cuda(tmp_path, precision):
    pytest.importorskip("safetensors", reason="packages are safetensors files")
    from engine import Predictor
    from engine.model import build_reference_model
    from engine.package import save_package

    from ..helpers import random_images, small_config, small_tensors

    cfg = small_config("openai-clip-vit-b16", "seg", "channel")
    tensors = small_tensors(cfg, seed=2)
    path = tmp_path / "m.htpkg"
    save_package(path, cfg, tensors)
    predictor = Predictor.load(path, backend="optimized", device="cuda", precision=precision)
    images = random_images(2, cfg.image_size, seed=5)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
    actual = predictor.forward(images.cuda()).cpu()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    assert_relative(actual, expected, RELATIVE[dtype], f"optimized cuda {precision}")
