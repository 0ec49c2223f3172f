"""Stream metrics in constant memory: per-stage and end-to-end latency percentiles, throughput, drops."""

from __future__ import annotations

import threading
import time

import numpy as np

STAGES = ("queue", "preprocess", "infer", "postprocess", "sink", "end_to_end")
RESERVOIR = 8192  # exact percentiles up to this many frames; a uniform sample of all frames after that


class LatencyReservoir:
    """Latency samples (seconds) in a fixed-size reservoir: memory stays flat however long the stream runs.

    A running sample, unlike `engine.bench.LatencyStats` (the frozen statistics of a finished benchmark run)."""

    def __init__(self, capacity: int = RESERVOIR, seed: int = 0):
        self.samples = np.empty(capacity, dtype=np.float64)
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self._rng = np.random.default_rng(seed)

    def add(self, seconds: float) -> None:
        capacity = len(self.samples)
        if self.count < capacity:
            self.samples[self.count] = seconds
        else:
            slot = int(self._rng.integers(0, self.count + 1))  # reservoir sampling (algorithm R)
            if slot < capacity:
                self.samples[slot] = seconds
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)

    def percentile(self, q: float) -> float:
        kept = self.samples[:min(self.count, len(self.samples))]
        return float(np.percentile(kept, q)) if len(kept) else 0.0

    def summary_ms(self) -> dict:
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean": 1e3 * self.total / self.count, "p50": 1e3 * self.percentile(50),
                "p95": 1e3 * self.percentile(95), "p99": 1e3 * self.percentile(99), "max": 1e3 * self.maximum}


class StreamMetrics:
    """Counters and latencies of one stream run; thread-safe (stages record from their own threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.latency = {stage: LatencyReservoir(seed=i) for i, stage in enumerate(STAGES)}
        self.frames_in = 0
        self.processed = 0
        self.dropped = {"before_preprocess": 0, "before_infer": 0}
        self.cancelled = 0
        self.batch_sizes: dict = {}
        self.started = time.monotonic()
        self.finished: float | None = None
        self.first_source_time: float | None = None
        self.last_source_time: float | None = None

    def frame_arrived(self, timestamp: float) -> None:
        with self._lock:
            self.frames_in += 1
            if self.first_source_time is None:
                self.first_source_time = timestamp
            self.last_source_time = timestamp

    def dropped_at(self, where: str, count: int = 1) -> None:
        with self._lock:
            self.dropped[where] += count

    def cancel(self, count: int) -> None:
        with self._lock:
            self.cancelled += count

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

    def frame_done(self, stamps: dict) -> None:
        """`stamps`: monotonic times `arrived, preprocess_start, preprocess_end, infer_start, infer_end,
        postprocess_end, delivered` of one frame."""
        with self._lock:
            self.processed += 1
            self.latency["queue"].add((stamps["preprocess_start"] - stamps["arrived"])
                                      + (stamps["infer_start"] - stamps["preprocess_end"]))
            self.latency["preprocess"].add(stamps["preprocess_end"] - stamps["preprocess_start"])
            self.latency["infer"].add(stamps["infer_end"] - stamps["infer_start"])
            self.latency["postprocess"].add(stamps["postprocess_end"] - stamps["infer_end"])
            self.latency["sink"].add(stamps["delivered"] - stamps["postprocess_end"])
            self.latency["end_to_end"].add(stamps["delivered"] - stamps["arrived"])

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def snapshot(self) -> dict:
        """A cheap live view for progress lines: frames in/processed/dropped, fps, latency p50/p99 (ms)."""
        with self._lock:
            elapsed = (self.finished or time.monotonic()) - self.started
            e2e = self.latency["end_to_end"]
            return {"frames_in": self.frames_in, "processed": self.processed, "dropped": self.total_dropped,
                    "elapsed_s": elapsed, "fps": self.processed / elapsed if elapsed > 0 else 0.0,
                    "latency_p50_ms": 1e3 * e2e.percentile(50), "latency_p99_ms": 1e3 * e2e.percentile(99)}

    def report(self, **context) -> dict:
        """Everything, JSON-ready: context (policy, backend, …), counts, throughput and latency tables (ms)."""
        with self._lock:
            elapsed = (self.finished or time.monotonic()) - self.started
            span = ((self.last_source_time - self.first_source_time) if self.first_source_time is not None
                    else 0.0)
            return {
                **context,
                "frames_in": self.frames_in,
                "processed": self.processed,
                "dropped": self.total_dropped,
                "dropped_by_stage": dict(self.dropped),
                "cancelled": self.cancelled,
                "wall_s": elapsed,
                "throughput_fps": self.processed / elapsed if elapsed > 0 else 0.0,
                "input_fps": (self.frames_in - 1) / span if span > 0 else None,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "latency_ms": {stage: stats.summary_ms() for stage, stats in self.latency.items()},
            }
