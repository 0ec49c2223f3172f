"""What the sections of the GPU check share: the run's state, the timer, CUDA-graph timing, the environment."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from engine.bench.machine import machine_info, short_sha
from htkernels.timing import cuda_event_ms

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# width, adapter bottleneck r and token grid of the model (ViT-B/16 at 224²), and the toy sizes of `--tiny`.
MODEL_SHAPE = (768, 64, 14)
TINY_SHAPE = (48, 16, 5)


class Timer:
    """Medians of repeated calls: CUDA events on a GPU (device time incl. launch gaps), wall clock on CPU."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device = device
        self.warmup = warmup
        self.reps = reps

    def __call__(self, fn) -> dict:
        for _ in range(self.warmup):
            fn()
        samples = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            samples = [cuda_event_ms(fn) * 1e3 for _ in range(self.reps)]
        else:
            for _ in range(self.reps):
                begin = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - begin) * 1e6)
        quartiles = np.percentile(samples, [25, 75])
        return {"median_us": float(np.median(samples)), "p25_us": float(quartiles[0]),
                "p75_us": float(quartiles[1]), "reps": len(samples)}


@dataclass
class Check:
    """One run of the GPU check: its options, device, timer, the results so far and how to save them."""

    args: argparse.Namespace
    device: torch.device
    timer: Timer
    results: dict
    save: Callable[[], None]
    started: float  # time.monotonic() at the start of the run

    def deadline(self, fraction: float) -> float:
        """The monotonic time at `fraction` of the run's budget (`--budget-s`): no new torch.compile past it."""
        return self.started + fraction * self.args.budget_s

    @property
    def shape(self) -> tuple:
        """(width, r, grid) of the kernels' inputs."""
        return TINY_SHAPE if self.args.tiny else MODEL_SHAPE


def error_text(exc: BaseException, limit: int = 300) -> str:
    return f"{type(exc).__name__}: {exc}"[:limit]


def graph_time(timer: Timer, fn, repeat: int) -> dict:
    """Device time of `fn` inside a CUDA graph of `repeat` back-to-back calls, per call (no launch overhead)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            fn()
    result = timer(graph.replay)
    return {k: (v / repeat if k.endswith("_us") else v) for k, v in result.items()}


def environment(device: torch.device) -> dict:
    """The run's machine (`engine.bench.machine.machine_info`, under `machine`) and, at the top, the fields the
    table and earlier readers of gpu_check.json use: date, git_sha, python, torch, device, triton and on a GPU
    card, capability, memory_gib, cuda, driver."""
    machine = machine_info(str(device))
    info = {"date": machine["date"], "git_sha": short_sha(machine["git"]["sha"]), "python": machine["python"],
            "torch": torch.__version__, "device": str(device), "triton": machine["libraries"].get("triton")}
    gpu = machine["gpu"]
    if gpu is not None:
        info.update(card=gpu["name"], capability=gpu["capability"], memory_gib=gpu["memory_bytes"] / 2**30,
                    cuda=gpu["cuda_runtime"], driver=gpu["driver"])
    info["machine"] = machine
    return info


def cuda_provider(device: torch.device):
    """The CUDA C++ provider when it is present and built, else None (with why)."""
    try:
        # Imported here: a provider registry that fails to import only removes the `cuda` column.
        from engine.optimize.kernels import get_kernels

        provider = get_kernels("cuda")
        usable, reason = provider.available(str(device))
        return (provider(), "") if usable else (None, reason)
    except Exception as exc:  # noqa: BLE001  (any failure here only removes one column of the table)
        return None, error_text(exc)
