"""The CPU runner of the optimized backend: precision conversion, then `torch.compile` of the transformer blocks.

Each transformer block (with its adapter) is compiled; blocks of the same kind share one compiled graph (their
weights are graph inputs), so compiling costs about one block, not ten, and the inductor cache on disk is small.
The embedding and the head (~4% of the time) run eagerly: compiling them cost load time for no measurable gain. Batch 1 gets its own static graph, compiled at load time; every other batch size
shares one dynamic graph, compiled (or read from the cache) by the first call with a batch > 1.

Settings (`engine.settings`):
- `HT_ENGINE_CACHE`: cache root (default `~/.cache/ht-engine`); compiled code lives in `<root>/inductor`
  (inductor's own `TORCHINDUCTOR_CACHE_DIR` is pointed there while the engine compiles or runs, then restored).
- `HT_ENGINE_COMPILE=0`: run eagerly (no compiler, no C++ toolchain needed).
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from .. import settings
from ..errors import BackendError
from ..runner import Runner
from .onednn import onednn_linears
from .quant import quantize_linears

# Inductor's own variable, not an engine setting: the engine writes it around its compiles and restores it after.
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

@contextlib.contextmanager
def inductor_cache_dir():
    """Point inductor's on-disk caches at the engine's cache for the duration of a compile or call (inductor
    writes its default into the environment on first use, so a value found there says nothing about the user)."""
    path = settings.cache_root() / "inductor"
    path.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(INDUCTOR_CACHE_ENV)
    os.environ[INDUCTOR_CACHE_ENV] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(INDUCTOR_CACHE_ENV, None)
        else:
            os.environ[INDUCTOR_CACHE_ENV] = previous


class _Region:
    """A compiled module whose batch dimension is dynamic from the first batch > 1 on (batch 1 stays static)."""

    def __init__(self, module: torch.nn.Module):
        self.compiled = torch.compile(module)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            torch._dynamo.mark_dynamic(x, 0)
        return self.compiled(x)


class CompiledModel:
    """`OptimizedHTModel.forward` with every block through a `_Region`."""

    def __init__(self, model):
        self.embed = model.embed
        self.blocks = [_Region(block) for block in model.blocks]
        self.head = model.head
        self.extract = model.extract

    def __call__(self, images: torch.Tensor, grid: bool = False) -> torch.Tensor:
        x = self.embed(images)
        found = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            found[index] = x
        return self.head([found[i] for i in self.extract], grid=grid)


def prepare(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Every dense layer with a bias runs through oneDNN's matmul (engine.optimize.onednn): fp32 at 1.1–2.0× the
    GEMM rate of the BLAS `F.linear` calls on the CPUs measured there, bf16 with fc1's GELU in the GEMM's epilogue
    (with the `CpuAdapterKernels` provider of engine.optimize.cpu_kernels).
    int8: first the transformer blocks' GEMMs (qkv, proj, fc1, fc2: 96% of the FLOPs) become dynamically quantized
    int8 GEMMs (engine.optimize.quant); the patch embedding and the head stay fp32 (~3% of the FLOPs), which took
    the seg argmax agreement to fp32 of a full-size random model from 98.7% to 99.1%. fp32/bf16 models come built in
    their dtype."""
    if precision == "int8":
        quantize_linears(model.blocks)
    return onednn_linears(model)


def make_cpu_runner(model: torch.nn.Module, package, precision: str) -> Runner:
    model = prepare(model, precision)
    image_size = package.config.image_size
    forward = model
    load_seconds = 0.0
    if settings.COMPILE.get():
        start = time.perf_counter()
        try:
            with inductor_cache_dir(), torch.inference_mode():
                forward = CompiledModel(model)
                forward(torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)))
        except Exception as exc:  # the compiler raises many types (missing C++ toolchain, lowering errors)
            raise BackendError(f"torch.compile of the optimized model failed ({type(exc).__name__}: {exc}); "
                               f"set HT_ENGINE_COMPILE=0 to run it eagerly") from exc
        load_seconds = time.perf_counter() - start

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        with inductor_cache_dir():
            return forward(batch.cpu()).float()

    @torch.inference_mode()
    def run_grid(batch: torch.Tensor) -> torch.Tensor:
        with inductor_cache_dir():
            return forward(batch.cpu(), grid=True).float()

    runner = Runner(run=run, uses_torch=True, device="cpu", precision=precision,
                    run_grid=run_grid if package.config.task == "seg" else None)
    runner.compile_seconds = load_seconds
    return runner
