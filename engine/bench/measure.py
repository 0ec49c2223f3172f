"""The measurement core: timed calls, latency statistics, relative error, peak memory and an on-the-spot GEMM rate.

CPU calls are timed with `time.perf_counter_ns`; calls of torch runners on a CUDA device with CUDA events around
the call (the device's own clock, `htkernels.timing.cuda_event_ms`, the timer the launch tuner uses too),
synchronizing after each call so that one call's latency is not hidden in the next one's queue. Runners that split a
call into its host-to-device copy, compute and device-to-host copy (`Runner.run_split`, artifact runtimes on a GPU)
time the phases themselves; `time_split_calls` runs them under the same rule and `split_summary` summarizes them.
`relative_error` is the one error measure of the project: the bench suite, the benchmarks and the test suite's
tolerance table (`tests/tolerances.py`) all compare with it.
"""

from __future__ import annotations

import math
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
# A percentile p rests on the samples above it: among 1 / (1 - p/100) samples one lies above it on average. Fewer
# than that and the reported "p99" is just the maximum of a handful of runs (p99: 100 samples, p90: 10), the rule
# trtexec and perf_analyzer users expect a warning for.
SAMPLES_PER_TAIL = 1


def percentile_key(percentile: float) -> str:
    """The report's key of a percentile: 50 -> "p50_ms", 99.9 -> "p99.9_ms"."""
    return f"p{f'{percentile:.6f}'.rstrip('0').rstrip('.')}_ms"  # never an exponent: 1e-05 is no key


def short_percentiles(stats: dict) -> list:
    """`(key, runs needed)` of each percentile in `stats` (a `LatencyStats.to_dict()`) that rests on fewer timed
    runs than `samples_needed` asks for."""
    short = []
    for key in stats:
        if key.startswith("p") and key.endswith("_ms"):
            need = samples_needed(float(key[1:-3]))
            if need is not None and stats["runs"] < need:
                short.append((key, need))
    return short


def samples_needed(percentile: float) -> int | None:
    """Timed runs a percentile needs to be trusted (`SAMPLES_PER_TAIL / (1 - p/100)`); None for p100, the max,
    which every sample count gives exactly."""
    if percentile >= 100.0:
        return None
    return math.ceil(round(SAMPLES_PER_TAIL / (1.0 - percentile / 100.0), 6))  # p99.9: 1000, not 1001


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics of timed runs, in milliseconds: min / mean / median / max and the requested percentiles
    (linearly interpolated), keyed by `percentile_key`."""

    runs: int
    min_ms: float
    mean_ms: float
    median_ms: float
    max_ms: float
    percentiles_ms: dict

    @classmethod
    def from_samples(cls, samples_ms, percentiles=DEFAULT_PERCENTILES) -> "LatencyStats":
        values = np.asarray(list(samples_ms), dtype=np.float64)
        if values.size == 0:
            raise ValueError("latency statistics need at least one timed run")
        wanted = [float(p) for p in percentiles]
        at = np.percentile(values, wanted) if wanted else []
        return cls(runs=int(values.size), min_ms=float(values.min()), mean_ms=float(values.mean()),
                   median_ms=float(np.median(values)), max_ms=float(values.max()),
                   percentiles_ms={percentile_key(p): float(v) for p, v in zip(wanted, at)})

    def to_dict(self) -> dict:
        return {"runs": self.runs, "min_ms": self.min_ms, "mean_ms": self.mean_ms, "median_ms": self.median_ms,
                "max_ms": self.max_ms, **self.percentiles_ms}


def throughput_fps(batch: int, samples_ms) -> float:
    """Frames per second over the timed runs: frames processed / time spent in them."""
    total_ms = float(np.sum(samples_ms))
    return batch * len(samples_ms) * 1000.0 / total_ms if total_ms > 0 else float("inf")


def timer_kind(device: str, uses_torch: bool) -> str:
    return "cuda_events" if device.startswith("cuda") and uses_torch else "perf_counter_ns"


def time_calls(call, *, timer: str, warmup_s: float, duration_s: float, iterations: int = 1,
               max_runs: int = 100_000, device: str = "cuda") -> list:
    """Warm up with untimed calls for `warmup_s` seconds (at least one call), then time calls until both at least
    `iterations` ran and `duration_s` seconds of wall time passed, whichever is longer (at most `max_runs`: a
    cap on memory, not a convention). Returns the latencies in milliseconds. With `cuda_events`, the events go on
    the current stream of `device`, where the torch runners enqueue their work."""
    _warm_up(call, warmup_s)
    if timer == "cuda_events":
        import torch

        from htkernels.timing import cuda_event_ms

        with torch.cuda.device(torch.device(device)):
            torch.cuda.synchronize()
            return _timed_runs(lambda: cuda_event_ms(call), duration_s, iterations, max_runs)
    return _timed_runs(lambda: host_call_ms(call), duration_s, iterations, max_runs)


def time_interleaved(calls: list, *, warmup_s: float, duration_s: float, iterations: int = 1,
                     max_rounds: int = 100_000, device: str = "cuda") -> list:
    """`time_calls` for several contenders at once, round-robin: each `(call, timer)` of `calls` is warmed up as
    there, then every round times one call of each, in order, until at least `iterations` rounds ran and
    `duration_s` seconds per contender passed. A load change on a shared machine then reaches every contender alike,
    and their ratios compare runs made at the same time. Returns one latency list (ms) per contender."""
    if not calls:
        return []
    for call, _timer in calls:
        _warm_up(call, warmup_s)
    samplers = [_sampler(call, timer, device) for call, timer in calls]
    rounds = _timed_runs(lambda: [sample() for sample in samplers], duration_s * len(calls), iterations, max_rounds)
    return [[latencies[index] for latencies in rounds] for index in range(len(calls))]


def _sampler(call, timer: str, device: str):
    """A function timing one `call()` in ms with `timer` (`cuda_events` on `device`'s current stream, or the host
    clock)."""
    if timer != "cuda_events":
        return lambda: host_call_ms(call)
    import torch

    from htkernels.timing import cuda_event_ms

    def sample():
        with torch.cuda.device(torch.device(device)):
            return cuda_event_ms(call)
    return sample


def time_split_calls(call_split, *, warmup_s: float, duration_s: float, iterations: int = 1,
                     max_runs: int = 100_000) -> list:
    """`time_calls` for a runner's `run_split` (`engine.runner.Runner`): the same warm-up and stopping rule, and per
    timed call the `(h2d_ms, compute_ms, d2h_ms)` the call measured itself, in its own timer."""
    _warm_up(call_split, warmup_s)
    return _timed_runs(lambda: tuple(float(ms) for ms in call_split()[1]), duration_s, iterations, max_runs)


def _warm_up(call, warmup_s: float) -> None:
    warmup_end = time.perf_counter_ns() + int(warmup_s * 1e9)
    call()
    while time.perf_counter_ns() < warmup_end:
        call()


def _timed_runs(sample, duration_s: float, iterations: int, max_runs: int) -> list:
    samples = []
    deadline = time.perf_counter_ns() + int(duration_s * 1e9)
    while len(samples) < max_runs and (len(samples) < iterations or time.perf_counter_ns() < deadline):
        samples.append(sample())
    return samples


def host_call_ms(call) -> float:
    """Milliseconds of one `call()` on the host clock (`perf_counter_ns`), the timer of every host-side run."""
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e6


SPLIT_PHASES = ("h2d_ms", "compute_ms", "d2h_ms")


def split_summary(samples, timer: str, percentiles=DEFAULT_PERCENTILES) -> dict:
    """A case's `gpu_split_ms` from its `time_split_calls` samples: latency statistics of each phase and of their
    sum per run, trtexec's Host Latency (H2D + GPU Compute + D2H), the run count, the timer and every sample."""
    phases = np.asarray(samples, dtype=np.float64).reshape(-1, len(SPLIT_PHASES))
    if phases.shape[0] == 0:
        raise ValueError("a host/device split needs at least one timed run")
    summary = {"timer": timer, "runs": int(phases.shape[0])}
    for column, key in enumerate(SPLIT_PHASES):
        summary[key] = LatencyStats.from_samples(phases[:, column], percentiles).to_dict()
    summary["host_latency_ms"] = LatencyStats.from_samples(phases.sum(axis=1), percentiles).to_dict()
    summary["samples_ms"] = [[round(float(ms), 4) for ms in run] for run in phases]
    return summary


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
        samples = time_calls(lambda: torch.matmul(a, b), timer=timer, warmup_s=0.0, duration_s=duration_s,
                             iterations=3, device=device)
    median_ms, min_ms = float(np.median(samples)), float(np.min(samples))
    flops = 2.0 * size ** 3
    return {"precision": precision, "size": size, "runs": len(samples), "median_ms": median_ms, "min_ms": min_ms,
            "gflops": flops / (min_ms * 1e6), "median_gflops": flops / (median_ms * 1e6)}
