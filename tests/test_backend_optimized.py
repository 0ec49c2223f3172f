"""`Predictor.load(..., backend="optimized")` on CPU: registration, precisions, errors."""

import pytest
import torch

from engine import Predictor, available_backends
from engine.errors import BackendError
from engine.package import save_package

from .helpers import random_images, small_config, small_tensors
from .tolerances import RELATIVE, assert_relative


@pytest.fixture(scope="module")
def seg_package(tmp_path_factory):
    cfg = small_config("biomedclip-vit-b16", "seg", "spectral")
    path = tmp_path_factory.mktemp("pkg") / "seg.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=21))
    return path


def test_optimized_is_registered_on_cpu():
    assert "optimized" in available_backends("cpu")


def test_optimized_fp32_predictor_equals_reference(seg_package):
    images = random_images(3, 112, seed=22)
    expected = Predictor.load(seg_package, backend="reference").forward(images)
    predictor = Predictor.load(seg_package, backend="optimized", precision="fp32")
    assert_relative(predictor.forward(images), expected, RELATIVE[torch.float32], "optimized fp32 predictor")
    assert_relative(torch.from_numpy(predictor.forward(images.numpy())), expected, RELATIVE[torch.float32], "numpy")


def test_kernel_choice_is_checked(seg_package):
    with pytest.raises(BackendError, match="backend 'reference' has no kernel choice"):
        Predictor.load(seg_package, backend="reference", kernels="triton")
    with pytest.raises(BackendError, match="kernels='cuda' needs a CUDA device"):
        Predictor.load(seg_package, backend="optimized", kernels="cuda")
    with pytest.raises(BackendError, match="kernels='triton' needs a CUDA device"):
        Predictor.load(seg_package, backend="optimized", kernels="triton")


def test_optimized_rejects_unknown_precision(seg_package):
    with pytest.raises(BackendError, match="precision 'fp8'"):
        Predictor.load(seg_package, backend="optimized", precision="fp8")


# Error bounds of the lower precisions to the fp32 reference on small models (tests/helpers.small_config, width 48,
# calibrated random weights) and synthetic ultrasound frames. Measured worst cases over all archs and filter kinds
# at the time of writing: seg logits 0.037 (bf16) / 0.043 (int8), seg argmax agreement 99.4% / 99.3%, cls logits
# 0.062 / 0.155. The full-size numbers are in benchmarks/results/cpu.md.
LOWER_PRECISION_BOUNDS = {
    ("seg", "bf16"): (0.06, 0.99), ("seg", "int8"): (0.08, 0.99),
    ("cls", "bf16"): (0.10, 1.0), ("cls", "int8"): (0.25, 1.0),
}


def _calibrated_package(tmp_path, arch, task, filter_kind):
    from engine.config import AUTHORS_PREPROCESSING
    from engine.weights import random_package_tensors

    cfg = small_config(arch, task, filter_kind, num_classes=2, preprocessing=dict(AUTHORS_PREPROCESSING, size=112))
    path = tmp_path / f"{arch}-{task}-{filter_kind}.htpkg"
    save_package(path, cfg, random_package_tensors(cfg, seed=5))
    return path


def _ultrasound_batch(predictor, count=4):
    from engine.synthetic import synthetic_frame

    frames = [synthetic_frame(150 + 9 * i, 200 - 5 * i, seed=i)[0] for i in range(count)]
    return torch.from_numpy(predictor.preprocess(frames))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("task,arch,filter_kind", [
    ("seg", "biomedclip-vit-b16", "channel"), ("seg", "openai-clip-vit-b16", "spectral"),
    ("seg", "metaclip-vit-b16", "channel"), ("seg", "unimedclip-vit-b16", "spectral"),
    ("cls", "biomedclip-vit-b16", "spectral"), ("cls", "openai-clip-vit-b16", "channel")])
def test_lower_precision_error_bounds(tmp_path, monkeypatch, precision, task, arch, filter_kind):
    monkeypatch.setenv("HT_ENGINE_COMPILE", "0")
    path = _calibrated_package(tmp_path, arch, task, filter_kind)
    reference = Predictor.load(path, backend="reference")
    images = _ultrasound_batch(reference)
    expected = reference.forward(images)
    predictor = Predictor.load(path, backend="optimized", precision=precision)
    actual = predictor.forward(images)
    assert actual.dtype == torch.float32
    max_error, min_agreement = LOWER_PRECISION_BOUNDS[(task, precision)]
    assert_relative(actual, expected, max_error, f"{precision} {task} {arch} {filter_kind}")
    agreement = (actual.argmax(1) == expected.argmax(1)).double().mean().item()
    assert agreement >= min_agreement, f"{precision} argmax agreement {agreement:.4f} < {min_agreement}"


def test_int8_linear_quantization_error():
    from engine.optimize.quant import Int8DynamicLinear

    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 200)
    quantized = Int8DynamicLinear(layer)
    for x in (torch.randn(7, 96), torch.nn.functional.gelu(3 * torch.randn(2, 5, 96)), torch.rand(1, 96) + 4.0):
        with torch.inference_mode():
            # Per-row 8-bit activations and per-channel 8-bit weights: within 1.5% of the fp32 output's range.
            assert_relative(quantized(x), layer(x), 1.5e-2, f"int8 linear on {tuple(x.shape)}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_linear_equals_the_torch_linear(dtype):
    from engine.optimize.onednn import OneDNNLinear, onednn_available, onednn_bf16_supported

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN (torch.backends.mkldnn)")
    if dtype == torch.bfloat16 and not onednn_bf16_supported():
        pytest.skip("oneDNN has no bf16 matmul on this CPU (AVX-512 or newer needed); the model keeps torch's linear")
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 200).to(dtype)
    fast = OneDNNLinear(layer)
    # Contiguous, batched, single-token and a strided (transposed) input.
    for x in (torch.randn(7, 96), torch.randn(2, 5, 96), torch.randn(1, 1, 96), torch.randn(96, 7).t()):
        x = x.to(dtype)
        with torch.inference_mode():
            assert fast(x).dtype == dtype
            assert_relative(fast(x).float(), layer(x).float(), RELATIVE[dtype], f"oneDNN linear on {tuple(x.shape)}")
            # fc1's GELU (erf) in the GEMM's epilogue, against the fp32 GELU of the torch layer.
            expected = torch.nn.functional.gelu(layer(x).float())
            assert_relative(fast(x, "gelu").float(), expected, RELATIVE[dtype], f"oneDNN linear + GELU {dtype}")


def test_cpu_model_runs_its_dense_layers_through_onednn(seg_package):
    from engine.optimize.onednn import OneDNNLinear, onednn_available, onednn_bf16_supported

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN (torch.backends.mkldnn)")
    from engine.backends.optimized import build_model
    from engine.optimize.cpu import prepare
    from engine.optimize.quant import Int8DynamicLinear
    from engine.package import load_package

    gemms = ("qkv", "proj", "fc1", "fc2")
    # bf16 only where oneDNN has bf16 kernels (AVX-512 and newer); elsewhere torch's linear (the test below).
    for precision, expected in (("fp32", OneDNNLinear),
                                ("bf16", OneDNNLinear if onednn_bf16_supported() else torch.nn.Linear)):
        model = prepare(build_model(load_package(seg_package), precision), precision)
        assert {type(getattr(block, name)) for block in model.blocks for name in gemms} == {expected}
        assert type(model.embed.proj) is expected
    # int8: the blocks' GEMMs quantized, the fp32 rest (embedding) through oneDNN.
    model = prepare(build_model(load_package(seg_package), "int8"), "int8")
    assert {type(getattr(block, name)) for block in model.blocks for name in gemms} == {Int8DynamicLinear}
    assert type(model.embed.proj) is OneDNNLinear


def test_bf16_keeps_torch_linears_where_onednn_has_no_bf16_kernels(seg_package, tmp_path):
    """A CPU below AVX-512 (simulated with oneDNN's own `ONEDNN_MAX_CPU_ISA`) has no oneDNN bf16 inner product: the
    bf16 model keeps torch's linears there (which run), fp32 still goes through oneDNN; both forwards run."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from engine import Predictor
        from engine.backends.optimized import build_model
        from engine.optimize.cpu import prepare
        from engine.optimize.onednn import OneDNNLinear, onednn_bf16_supported
        from engine.package import load_package
        assert not onednn_bf16_supported()
        package = load_package({str(seg_package)!r})
        bf16 = prepare(build_model(package, "bf16"), "bf16")
        assert {{type(block.qkv) for block in bf16.blocks}} == {{torch.nn.Linear}}
        fp32 = prepare(build_model(package, "fp32"), "fp32")
        assert {{type(block.qkv) for block in fp32.blocks}} == {{OneDNNLinear}}
        size = package.config.image_size
        for precision in ("bf16", "fp32"):
            predictor = Predictor.load({str(seg_package)!r}, backend="optimized", precision=precision)
            assert torch.isfinite(predictor.forward(torch.rand(2, 3, size, size))).all()
        print("ok")
    """)
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", HT_ENGINE_COMPILE="0")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_cpu_backend_uses_the_cpu_adapter_kernels(seg_package, monkeypatch):
    from engine.backends import optimized
    from engine.optimize.cpu_kernels import CpuAdapterKernels

    built = []
    real = optimized.build_model
    monkeypatch.setenv("HT_ENGINE_COMPILE", "0")
    monkeypatch.setattr(optimized, "build_model", lambda *args: built.append(real(*args)) or built[-1])
    Predictor.load(seg_package, backend="optimized", precision="fp32")
    assert len(built) == 1 and {type(block.kernels) for block in built[0].blocks} == {CpuAdapterKernels}


def test_compiled_fp32_equals_reference_and_reuses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HT_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HT_ENGINE_COMPILE", "1")
    cfg = small_config("openai-clip-vit-b16", "seg", "spectral", image_size=64, layers=3, extract_layers=[0, 2],
                       adapter_layers=[1, 2])
    path = tmp_path / "tiny.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=31))
    predictor = Predictor.load(path, backend="optimized", precision="fp32")
    reference = Predictor.load(path, backend="reference")
    for batch in (1, 3, 2):
        images = random_images(batch, 64, seed=40 + batch)
        assert_relative(predictor.forward(images), reference.forward(images), RELATIVE[torch.float32],
                        f"compiled optimized, batch {batch}")
    assert any((tmp_path / "cache" / "inductor").rglob("*")), "compiled code was not written to the engine cache"


@pytest.mark.parametrize("filter_kind,usable,expected", [
    ("channel", {"triton", "cuda"}, "triton"), ("spectral", {"triton", "cuda"}, "cuda"),
    ("spectral", {"triton"}, "triton"), ("channel", {"cuda"}, "cuda"), ("channel", set(), "torch"),
])
def test_default_cuda_kernels(monkeypatch, filter_kind, usable, expected):
    from engine.backends import optimized
    from engine.config import ModelConfig

    monkeypatch.setattr(optimized, "_provider_status", lambda name, device: (name in usable, ""))
    config = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, filter_kind=filter_kind)
    assert optimized.default_cuda_kernels(config, "cuda") == expected


def test_cpu_block_benchmark_script_compares_the_gemms(tmp_path):
    """`benchmarks/bench_cpu_block.py --quick --sections gemm` (the other sections compile a full-size block: not in
    CI) times each GEMM both ways and writes the ratio."""
    import json

    from benchmarks import bench_cpu_block
    from engine.optimize.onednn import onednn_available, onednn_bf16_supported

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN (torch.backends.mkldnn)")
    out = tmp_path / "block.json"
    assert bench_cpu_block.main(["--quick", "--sections", "gemm", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    dtypes = ["float32"] + (["bfloat16"] if onednn_bf16_supported() else [])
    assert set(report["gemm"]) == {f"{name} {dtype}" for name in bench_cpu_block.GEMMS for dtype in dtypes}
    for case in report["gemm"].values():
        assert case["before"]["rounds"] == case["now"]["rounds"] == 3
        assert case["before"]["median_ms"] > 0 and case["now"]["median_ms"] > 0 and case["now_over_before"]["median"] > 0
    assert "spatial" not in report and "block" not in report
