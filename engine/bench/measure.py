"""The measurement core: timed calls, latency statistics, relative error, peak memory and an on-the-spot GEMM rate.

CPU calls are timed with `time.perf_counter_ns`; calls of torch runners on a CUDA device with CUDA events around
the call (the device's own clock, `htkernels.timing.cuda_event_ms`, the timer the launch tuner uses too),
synchronizing after each call so that one call's latency is not hidden in the next one's queue.
`relative_error` is the one error measure of the project: the bench suite, the benchmarks and the test suite's
tolerance table (`tests/tolerances.py`) all compare with it.
"""

from __future__ import annotations

import re
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics of timed runs, in milliseconds (percentiles linearly interpolated)."""

    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    mean_ms: float

    @classmethod
    def from_samples(cls, samples_ms) -> "LatencyStats":
        values = np.asarray(list(samples_ms), dtype=np.float64)
        if values.size == 0:
            raise ValueError("latency statistics need at least one timed run")
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(runs=int(values.size), median_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   max_ms=float(values.max()), min_ms=float(values.min()), mean_ms=float(values.mean()))

    def to_dict(self) -> dict:
        return asdict(self)


def throughput_fps(batch: int, samples_ms) -> float:
    """Frames per second over the timed runs: frames processed / time spent in them."""
    total_ms = float(np.sum(samples_ms))
    return batch * len(samples_ms) * 1000.0 / total_ms if total_ms > 0 else float("inf")


def timer_kind(device: str, uses_torch: bool) -> str:
    return "cuda_events" if device.startswith("cuda") and uses_torch else "perf_counter_ns"


def time_calls(call, *, timer: str, warmup_runs: int, duration_s: float, min_runs: int = 1,
               max_runs: int = 100_000, device: str = "cuda") -> list:
    """Run `call()` `warmup_runs` times untimed, then timed until `duration_s` of wall time has passed and at
    least `min_runs` ran (at most `max_runs`). Returns the latencies in milliseconds. With `cuda_events`, the
    events go on the current stream of `device`, where the torch runners enqueue their work."""
    for _ in range(warmup_runs):
        call()
    if timer == "cuda_events":
        import torch

        with torch.cuda.device(torch.device(device)):
            return _time_cuda(call, duration_s, min_runs, max_runs)
    samples = []
    deadline = time.perf_counter_ns() + int(duration_s * 1e9)
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter_ns() < deadline):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def _time_cuda(call, duration_s: float, min_runs: int, max_runs: int) -> list:
    import torch

    from htkernels.timing import cuda_event_ms

    torch.cuda.synchronize()
    samples = []
    deadline = time.perf_counter_ns() + int(duration_s * 1e9)
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter_ns() < deadline):
        samples.append(cuda_event_ms(call))
    return samples


def relative_error(actual, expected) -> float:
    """max|actual - expected| / max|expected|, in float64 (torch tensors or numpy arrays, any device and dtype).

    Computed on `actual`'s device (a large GPU output is not copied to the host). Shapes must be equal: a broadcast
    would compare something else. NaN or inf in `actual` give a non-finite result, which no tolerance accepts.
    """
    actual = _as_float64(actual)
    expected = _as_float64(expected).to(actual.device)
    if tuple(actual.shape) != tuple(expected.shape):
        raise ValueError(f"relative error of shape {tuple(actual.shape)} against shape {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp_min(1e-30)  # an all-zero reference: the absolute error, scaled up
    return float((actual - expected).abs().max() / scale)


def _as_float64(values):
    import torch

    if isinstance(values, torch.Tensor):
        return values.detach().double()
    return torch.from_numpy(np.array(values, dtype=np.float64))


class PeakMemory:
    """Peak memory between `reset()` and `peak()`.

    CPU: the process's resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs where the kernel
    allows it (`rss_peak`); elsewhere the high-water mark since the process started (`rss_peak_since_start`).
    CUDA: `torch.cuda.max_memory_allocated` of the device (`cuda_max_allocated`), the caching allocator's view.
    """

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device.startswith("cuda") else "rss_peak"

    def reset(self) -> None:
        if self.kind == "cuda_max_allocated":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _PROC_CLEAR_REFS.write_text("5")
        except OSError:
            self.kind = "rss_peak_since_start"

    def peak(self) -> int:
        if self.kind == "cuda_max_allocated":
            import torch

            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        high_water = _status_kib("VmHWM")
        if high_water is not None and self.kind == "rss_peak":
            return high_water * 1024
        return resident_peak_since_start()

    def current(self) -> int:
        if self.kind == "cuda_max_allocated":
            import torch

            return int(torch.cuda.memory_allocated(self.device))
        resident = _status_kib("VmRSS")
        return resident * 1024 if resident is not None else resident_peak_since_start()


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def resident_peak_since_start() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


GEMM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def gemm_rate(precision: str, device: str = "cpu", size: int | None = None, duration_s: float = 1.0) -> dict:
    """GFLOP/s of a square `size³` matmul in `precision` measured now on `device` (one warm-up call).

    `gflops` is the rate of the fastest run: the peak the machine reached, which is what a model's achieved rate
    is a fraction of (on a shared machine the median mostly measures the neighbours); `median_gflops` is there too.
    """
    import torch

    dtype = getattr(torch, GEMM_DTYPES[precision])
    if size is None:
        size = 4096 if device.startswith("cuda") else 1024
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    timer = "cuda_events" if device.startswith("cuda") else "perf_counter_ns"
    with torch.inference_mode():
        samples = time_calls(lambda: torch.matmul(a, b), timer=timer, warmup_runs=1, duration_s=duration_s,
                             min_runs=3, device=device)
    median_ms, min_ms = float(np.median(samples)), float(np.min(samples))
    flops = 2.0 * size ** 3
    return {"precision": precision, "size": size, "runs": len(samples), "median_ms": median_ms, "min_ms": min_ms,
            "gflops": flops / (min_ms * 1e6), "median_gflops": flops / (median_ms * 1e6)}
