"""CUDA-graph runner of the optimized model: one graph per batch size, captured on first use.

At batch 1 the forward is a few hundred short kernels; launching them one by one from Python costs more than
running them. A CUDA graph replays the whole forward with one launch. Each batch size gets its own graph with
static input and output buffers (a graph's addresses are fixed); a new batch size is captured once, then replayed.
All graphs allocate from one shared memory pool: replays are serialised on one stream (under a lock) and each
output is cloned right after its replay, so no graph needs another graph's intermediates to survive.
"""

from __future__ import annotations

import threading

import torch

from ..errors import BackendError, InputError
from ..runner import Runner
from .kernels import kernel_errors

WARMUP_RUNS = 2  # compiles the Triton kernels and lets cuBLAS/cuDNN pick their algorithms before capture


class CudaGraphRunner:
    """`run(batch float32 [B,3,S,S]) -> logits` through the graph captured for `B` (captured on first use)."""

    def __init__(self, model: torch.nn.Module, device: str, max_batch: int | None = None):
        self.model = model
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device, got {device!r}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch = max_batch
        self.graphs: dict = {}
        self._pool = None
        self._lock = threading.Lock()

    def _capture(self, shape: tuple):
        static_input = torch.zeros(shape, device=self.device, dtype=torch.float32)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_RUNS):
                self.model(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            static_output = self.model(static_input)
        self._pool = graph.pool()
        return graph, static_input, static_output

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() != 4:
            raise InputError(f"expected a [B,3,S,S] batch, got shape {list(batch.shape)}")
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise InputError(f"batch of {batch.shape[0]} exceeds this runner's maximum batch {self.max_batch}")
        shape = tuple(batch.shape)
        # The capture runs the kernels' launchers: a failure there reaches the caller as the engine's error type.
        with torch.cuda.device(self.device), self._lock, kernel_errors():
            entry = self.graphs.get(shape)
            if entry is None:
                entry = self.graphs[shape] = self._capture(shape)
            graph, static_input, static_output = entry
            static_input.copy_(batch, non_blocking=True)
            graph.replay()
            return static_output.clone()


def make_cuda_runner(model: torch.nn.Module, device: str, precision: str, max_batch: int | None = None) -> Runner:
    """Wrap a CUDA model (float32 images in, float32 logits out) so each batch size runs as one CUDA graph."""
    runner = CudaGraphRunner(model.eval(), device, max_batch)
    return Runner(run=runner, uses_torch=True, device=str(runner.device), precision=precision, max_batch=max_batch)
