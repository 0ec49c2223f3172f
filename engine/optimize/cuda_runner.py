"""CUDA-graph runner of the optimized model: one graph per batch size, captured on first use.

At batch 1 the forward is a few hundred short kernels; launching them one by one from Python costs more than
running them. A CUDA graph replays the whole forward with one launch. Each batch size gets its own graph with
static input and output buffers (a graph's addresses are fixed); a new batch size is captured once, then replayed.
All graphs allocate from one shared memory pool: replays are serialised on one stream (under a lock) and each
output is consumed right after its replay (cloned; for seg upsampled from the grid logits into a new tensor; for the
frame path copied to the host), so no graph needs another graph's intermediates to survive. The frame path
(engine.optimize.frames) captures preprocess → forward → postprocess as one more graph per frame shape in the same
pool.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from ..errors import BackendError, InputError
from ..runner import Runner
from .frames import FramePipeline
from .kernels import kernel_errors
from .model import OptimizedHTModel

WARMUP_RUNS = 2  # compiles the Triton kernels and lets cuBLAS/cuDNN pick their algorithms before capture


class CudaGraphRunner:
    """`run(batch float32 [B,3,S,S]) -> logits` through the graph captured for `B` (captured on first use);
    `run_grid(batch)` the same for the seg grid logits; `replay` runs any function of one static input as a graph
    (the frame path of engine.optimize.frames: preprocess → forward → postprocess per frame shape)."""

    def __init__(self, model: torch.nn.Module, device: str, max_batch: int | None = None,
                 upsample: Callable | None = None):
        self.model = model
        # Seg: grid logits → full-size logits (`OptimizedHTModel.logits_from_grid`). With it, `run` replays the
        # graph of `run_grid` and upsamples right after the replay into a new tensor: the full-size logits are
        # written once, where a graph ending at them would write them into its static output and a clone copy them.
        self.upsample = upsample
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device, got {device!r}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch = max_batch
        self.graphs: dict = {}
        self._pool = None
        self._lock = threading.Lock()

    def _capture(self, fn: Callable, shape: tuple, dtype: torch.dtype):
        static_input = torch.zeros(shape, device=self.device, dtype=dtype)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_RUNS):
                fn(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            static_output = fn(static_input)
        self._pool = graph.pool()
        return graph, static_input, static_output

    def replay(self, key: tuple, source: torch.Tensor, fn: Callable, consume: Callable):
        """`consume(fn(source))` through the graph of `fn` stored under `key` (captured on first use, for `source`'s
        shape and dtype): `source` is copied into the graph's static input asynchronously, and `consume` is queued
        right after the replay, before any other graph may reuse the shared pool."""
        # The capture runs the kernels' launchers: a failure there reaches the caller as the engine's error type.
        with torch.cuda.device(self.device), self._lock, kernel_errors():
            entry = self.graphs.get(key)
            if entry is None:
                entry = self.graphs[key] = self._capture(fn, tuple(source.shape), source.dtype)
            graph, static_input, static_output = entry
            static_input.copy_(source, non_blocking=True)
            graph.replay()
            return consume(static_output)

    def _check(self, batch: torch.Tensor) -> None:
        if batch.dim() != 4:
            raise InputError(f"expected a [B,3,S,S] batch, got shape {list(batch.shape)}")
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise InputError(f"batch of {batch.shape[0]} exceeds this runner's maximum batch {self.max_batch}")

    def forward_key(self, shape: tuple) -> tuple:
        """The key in `graphs` of the graph that `run` replays for a batch of `shape`."""
        return ("grid",) + tuple(shape) if self.upsample is not None else tuple(shape)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self._check(batch)
        if self.upsample is not None:
            return self.replay(self.forward_key(batch.shape), batch.float(), self._grid_logits, self.upsample)
        return self.replay(self.forward_key(batch.shape), batch.float(), self.model, torch.Tensor.clone)

    def run_grid(self, batch: torch.Tensor) -> torch.Tensor:
        """Seg logits on the head's grid `[B,C,g,g]` (`model(batch, grid=True)`), one graph per batch size (the one
        `run` replays too when the runner upsamples)."""
        self._check(batch)
        return self.replay(("grid",) + tuple(batch.shape), batch.float(), self._grid_logits, torch.Tensor.clone)

    def _grid_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, grid=True)


def make_cuda_runner(model: torch.nn.Module, device: str, precision: str, max_batch: int | None = None,
                     frames: bool = False) -> Runner:
    """Wrap a CUDA model (float32 images in, float32 logits out) so each batch size runs as one CUDA graph.

    With `frames` (the model an `OptimizedHTModel`), the runner also has the frame path (`run_frames`, and
    `run_device_frames` for frames already on the device; engine.optimize.frames, one graph per frame shape) and, for
    seg, `run_grid`. A seg `OptimizedHTModel` is captured up to its grid logits and upsampled after each replay
    (`CudaGraphRunner.upsample`)."""
    seg = isinstance(model, OptimizedHTModel) and model.cfg.task == "seg"
    upsample = model.logits_from_grid if seg else None
    runner = CudaGraphRunner(model.eval(), device, max_batch, upsample=upsample)
    result = Runner(run=runner, uses_torch=True, device=str(runner.device), precision=precision, max_batch=max_batch)
    if frames:
        result.run_frames = FramePipeline(runner.model, runner.device, graphs=runner)
        result.run_device_frames = result.run_frames.run_device
        if model.cfg.task == "seg":
            result.run_grid = runner.run_grid
    return result
