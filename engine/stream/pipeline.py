"""The streaming runtime: source → preprocess → infer (micro-batches) → postprocess → sinks, one thread per stage.

Stages are joined by bounded channels. Policy `latest` (real time) keeps only the newest frames in front of
preprocessing and inference, so a stale frame never delays a fresh one; every frame it replaces is counted as
dropped, and the newest frame is always processed (so the last frame of a stream is too). Policy `all` (offline)
blocks the source when a channel is full (backpressure): every frame is processed exactly once, in order.

Stopping: the source ending or failing closes the channels behind it, so every frame already taken in is still
processed and delivered before `run` returns (or raises the source's error). `stop()` or Ctrl-C cancels: frames
not yet inferred are discarded (counted as cancelled), results already inferred are delivered to every sink, and
the report says `interrupted`. A failing stage stops everything upstream of it. Every stage is waited for with a
timeout; a stage that does not stop is an error.

Waiting uses one `threading.Event` per stage, set when its function returns, never `Thread.join(timeout)` /
`is_alive()`: on CPython 3.11 a KeyboardInterrupt landing inside `join` marks a thread that still runs as stopped,
and sinks would then be closed under a thread still writing to them.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import HTError, InputError, StreamError
from .metrics import StreamMetrics
from .sources import Frame, open_source

POLICIES = ("latest", "all")
THREAD_PREFIX = "ht-stream"
# The stages whose work the runner does inside inference on the "frames" path (on the device, or in the graph).
FUSED_STAGES = ("preprocess", "postprocess")


class StreamModel(Protocol):
    """What the pipeline runs: `engine.runtime.Predictor`, whose frame path the stages split (its `predict` runs the
    same three calls in one thread). `frame_path` names it ("frames": `prepare` passes uint8 frames through and
    `infer_batch` makes the results' arrays itself; "grid"/"logits": `prepare` preprocesses on the host and
    `results` makes the masks)."""

    task: str
    classes: list

    @property
    def frame_path(self) -> str: ...

    def prepare(self, frames: list): ...

    def infer_batch(self, prepared, first_index: int = 0): ...

    def results(self, outputs, sizes: list, first_index: int = 0) -> list: ...


@dataclass
class StreamResult:
    """What sinks receive: the source frame, its `FrameResult`, and the latency (s) from arrival to the sinks."""

    frame: Frame
    result: object
    latency_s: float


class Channel:
    """A bounded hand-over between two stages.

    mode "block": `put` waits while full (backpressure). mode "latest": `put` never waits; when full, the oldest
    item is dropped (`on_drop(item)`). `close()`: the producer is done; consumers drain, then get None.
    `abort()`: stop now; consumers get None at once and `discard()` hands back what was left.
    """

    def __init__(self, capacity: int, mode: str, on_drop=None):
        self.capacity, self.mode, self.on_drop = capacity, mode, on_drop
        self.items = collections.deque()
        self.closed = False
        self.aborted = False
        self.cond = threading.Condition()

    def put(self, item) -> bool:
        """False when the channel was aborted (the consumer stopped): the producer should stop too."""
        dropped = None
        with self.cond:
            while self.mode == "block" and len(self.items) >= self.capacity and not self.aborted:
                self.cond.wait()
            if self.aborted:
                return False
            if len(self.items) >= self.capacity:
                dropped = self.items.popleft()
            self.items.append(item)
            self.cond.notify_all()
        if dropped is not None and self.on_drop is not None:
            self.on_drop(dropped)
        return True

    def get(self, max_items: int = 1, wait_s: float = 0.0):
        """Up to `max_items` items (waiting up to `wait_s` to fill them after the first), or None at the end."""
        with self.cond:
            while not self.items and not self.closed and not self.aborted:
                self.cond.wait()
            if self.aborted or not self.items:
                return None
            deadline = time.monotonic() + wait_s
            while len(self.items) < max_items and not self.closed and not self.aborted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            if self.aborted:
                return None
            taken = [self.items.popleft() for _ in range(min(max_items, len(self.items)))]
            self.cond.notify_all()
            return taken

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def discard(self) -> list:
        with self.cond:
            left = list(self.items)
            self.items.clear()
            self.cond.notify_all()
            return left


@dataclass
class _Item:
    frame: Frame
    stamps: dict
    batch: object = None  # what `prepare` made of the frame: [1,3,S,S] array/tensor, or [frame] on the frames path
    ready: object = None  # a CUDA event the upload must reach before inference (GPU only)


class _CudaStaging:
    """GPU path: preprocessed frames go to pinned host memory and are copied on a dedicated stream,
    asynchronously; inference runs on its own stream and waits only for the copies it needs."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device)
        self.infer_stream = torch.cuda.Stream(self.device)

    def upload(self, batch: np.ndarray):
        torch = self.torch
        host = torch.from_numpy(batch).pin_memory()
        with torch.cuda.stream(self.copy_stream):
            device_batch = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return device_batch, event

    def infer(self, predictor, items: list):
        torch = self.torch
        with torch.cuda.stream(self.infer_stream):
            for item in items:
                self.infer_stream.wait_event(item.ready)
                item.batch.record_stream(self.infer_stream)  # the copy stream's memory is used here
            batch = torch.cat([item.batch for item in items]) if len(items) > 1 else items[0].batch
            return predictor.infer_batch(batch, items[0].frame.index)


def _cuda_device(predictor) -> str | None:
    """The CUDA device host-preprocessed batches are staged to; None on the CPU and on the "frames" path (the
    runner uploads the uint8 frames itself)."""
    runner = getattr(predictor, "runner", None)
    device = str(getattr(runner, "device", "cpu"))
    if runner is not None and getattr(runner, "uses_torch", False) and device.startswith("cuda") and \
            predictor.frame_path != "frames":
        return device
    return None


def _combine(prepared: list):
    """The `prepare` outputs of single frames as one micro-batch: frames concatenated as a list, batches along B."""
    if isinstance(prepared[0], list):
        return [frame for one in prepared for frame in one]
    return prepared[0] if len(prepared) == 1 else np.concatenate(prepared)


class StreamPipeline:
    """Runs a predictor over a source. Build once, `run(source)` once; `report` holds the metrics afterwards.

    predictor: an `engine.runtime.Predictor` (or another `StreamModel`). On its "frames" path the preprocess stage
        passes frames through and pre/postprocessing run inside the infer stage (the report's `fused_into_infer`).
    policy: "latest" (real time, drops stale frames) or "all" (every frame, backpressure).
    max_batch: largest micro-batch. Under `latest` it is also how many fresh frames may wait for inference.
    batch_wait_ms: how long inference waits for more frames to fill a batch once it holds one (`all` only;
        under `latest` it takes what is there, never waiting).
    budget_ms: under `latest`, frames older than this when a batch forms are dropped (the newest never is).
    sinks: objects with `open(info)`, `write(StreamResult)`, `close()` (see `engine.stream.sinks`).
    on_progress: called about every `progress_interval_s` with `StreamMetrics.snapshot()` (for live consoles).
    join_timeout_s: once stopping, how long the stages may go without progress (no frame delivered, no stage
        finished) before they are reported as hung.
    """

    def __init__(self, predictor: StreamModel, policy: str = "latest", max_batch: int = 1, batch_wait_ms: float = 2.0,
                 budget_ms: float | None = None, sinks=(), queue_size: int | None = None, on_progress=None,
                 progress_interval_s: float = 1.0, join_timeout_s: float = 10.0):
        if policy not in POLICIES:
            raise InputError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        runner_max = getattr(getattr(predictor, "runner", None), "max_batch", None)
        self.predictor = predictor
        self.policy = policy
        self.max_batch = min(max_batch, runner_max) if runner_max else max_batch
        self.batch_wait_s = max(batch_wait_ms, 0.0) / 1e3
        self.budget_s = None if budget_ms is None else budget_ms / 1e3
        self.sinks = list(sinks)
        self.queue_size = queue_size or 2 * self.max_batch + 2
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.join_timeout_s = join_timeout_s
        self.metrics = StreamMetrics()
        self.report: dict | None = None
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._stop = threading.Event()
        self._cancelled = False
        self._used = False
        self._staging = None
        # Just-in-time preprocessing under `latest` (see `_wait_for_demand`): smoothed stage times and the
        # inference cycle in progress.
        self._infer_cycle = 0
        self._infer_started: float | None = None
        self._infer_ema: float | None = None
        self._preprocess_ema: float | None = None

    # -- control -------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel from any thread (or a sink): stop reading, discard frames not yet inferred, deliver the rest."""
        self._cancelled = True
        self._stop.set()
        for channel in (getattr(self, "_to_preprocess", None), getattr(self, "_to_infer", None)):
            if channel is not None:
                channel.abort()
                self.metrics.cancel(len(channel.discard()))

    def _fail(self, error: BaseException, upstream: list) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = error
        self._stop.set()
        for channel in upstream:
            channel.abort()
            channel.discard()

    # -- stages --------------------------------------------------------------------------------------------------
    def _source_stage(self, source) -> None:
        try:
            for frame in source:
                if self._stop.is_set():
                    break
                arrived = time.monotonic()
                self.metrics.frame_arrived(frame.timestamp)
                if not self._to_preprocess.put(_Item(frame, {"arrived": arrived})):
                    self.metrics.cancel(1)
                    break
        except HTError as exc:
            self._fail(exc, [])
        except Exception as exc:
            index = self.metrics.frames_in
            self._fail(StreamError(f"{source.name}, frame {index}: the source failed: {type(exc).__name__}: {exc}",
                                   source=source.name, frame=index), [])
        finally:
            self._to_preprocess.close()
            try:
                source.close()
            except Exception:  # closing must not hide the stream's own outcome
                pass

    def _wait_for_demand(self, refreshed_cycle: int) -> int:
        """`latest` only: don't preprocess frames that would wait. While the inference channel is full (max_batch
        preprocessed frames wait for the busy inference stage), refresh its oldest frame once, timed to finish
        when inference is expected to become free, then wait until inference takes them. On a CPU this keeps
        preprocessing from stealing cores from inference, and the frame inferred next is about one preprocessing
        time old. Returns the cycle refreshed."""
        channel = self._to_infer
        with channel.cond:
            while len(channel.items) >= channel.capacity and not channel.closed and not channel.aborted:
                cycle = self._infer_cycle
                if refreshed_cycle == cycle or self._infer_started is None or self._infer_ema is None:
                    channel.cond.wait(0.05)
                    continue
                # Aim a little early: waking a thread takes time and inference times vary.
                lead = 1.5 * (self._preprocess_ema or 0.0) + 0.1 * self._infer_ema + 0.002
                wake = self._infer_started + self._infer_ema - lead
                remaining = wake - time.monotonic()
                if remaining <= 0:
                    return cycle
                channel.cond.wait(min(remaining, 0.05))
        return refreshed_cycle

    def _preprocess_stage(self) -> None:
        item = None
        refreshed_cycle = -1
        try:
            while True:
                if self.policy == "latest":
                    refreshed_cycle = self._wait_for_demand(refreshed_cycle)
                taken = self._to_preprocess.get(1)
                if taken is None:
                    break
                item = taken[0]
                item.stamps["preprocess_start"] = time.monotonic()
                batch = self.predictor.prepare([item.frame.pixels])
                if self._staging is not None:
                    item.batch, item.ready = self._staging.upload(batch)
                else:
                    item.batch = batch
                item.stamps["preprocess_end"] = time.monotonic()
                self._preprocess_ema = _ema(self._preprocess_ema,
                                            item.stamps["preprocess_end"] - item.stamps["preprocess_start"])
                if not self._to_infer.put(item):
                    self.metrics.cancel(1)
                    break
        except Exception as exc:
            self._fail(_stage_error("preprocess", exc, [item.frame.index] if item else []), [self._to_preprocess])
        finally:
            self._to_infer.close()

    def _take_batch(self):
        if self.policy == "all":
            return self._to_infer.get(self.max_batch, self.batch_wait_s)
        taken = self._to_infer.get(self.max_batch)
        if taken and self.budget_s is not None and len(taken) > 1:
            now = time.monotonic()
            fresh = [item for item in taken[:-1] if now - item.stamps["arrived"] <= self.budget_s] + [taken[-1]]
            self.metrics.dropped_at("before_infer", len(taken) - len(fresh))
            taken = fresh
        return taken

    def _infer_stage(self) -> None:
        items = []
        try:
            while True:
                items = self._take_batch()
                if items is None:
                    break
                start = time.monotonic()
                with self._to_infer.cond:
                    self._infer_cycle += 1
                    self._infer_started = start
                for item in items:
                    item.stamps["infer_start"] = start
                if self._staging is not None:
                    outputs = self._staging.infer(self.predictor, items)
                else:
                    outputs = self.predictor.infer_batch(_combine([i.batch for i in items]), items[0].frame.index)
                end = time.monotonic()
                self._infer_ema = _ema(self._infer_ema, end - start)
                self.metrics.batch(len(items))
                for item in items:
                    item.stamps["infer_end"] = end
                    item.batch = item.ready = None  # free the input now, not when the result is delivered
                if not self._to_postprocess.put((items, outputs)):
                    break
                items = []
        except Exception as exc:
            self._fail(_stage_error("inference", exc, [i.frame.index for i in items or []]),
                       [self._to_infer, self._to_preprocess])
        finally:
            self._to_postprocess.close()

    def _postprocess_stage(self) -> None:
        items = []
        try:
            while True:
                taken = self._to_postprocess.get(1)
                if taken is None:
                    break
                items, outputs = taken[0]
                for offset, item in enumerate(items):
                    frame = item.frame
                    result = self.predictor.results(outputs[offset:offset + 1], [frame.pixels.shape[:2]],
                                                    first_index=frame.index)[0]
                    item.stamps["postprocess_end"] = time.monotonic()
                    if not self._to_sinks.put((item, result)):
                        return
                items = []
        except Exception as exc:
            self._fail(_stage_error("postprocess", exc, [i.frame.index for i in items]),
                       [self._to_postprocess, self._to_infer, self._to_preprocess])
        finally:
            self._to_sinks.close()

    def _sink_stage(self) -> None:
        item = None
        try:
            while True:
                taken = self._to_sinks.get(1)
                if taken is None:
                    break
                item, result = taken[0]
                handed = time.monotonic()
                out = StreamResult(item.frame, result, handed - item.stamps["arrived"])
                for sink in self.sinks:
                    sink.write(out)
                item.stamps["delivered"] = time.monotonic()
                self.metrics.frame_done(item.stamps)
        except Exception as exc:
            self._fail(_stage_error("sink", exc, [item[0].frame.index] if isinstance(item, tuple) else
                                    ([item.frame.index] if item is not None else [])),
                       [self._to_sinks, self._to_postprocess, self._to_infer, self._to_preprocess])

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, source, fps: float | None = None, realtime: bool = False, context: dict | None = None) -> dict:
        """Stream `source` (anything `open_source` takes) to the sinks; returns the metrics report.

        Raises the first error (source, stage or sink) after every finished result was delivered;
        `self.report` is set either way. Ctrl-C cancels cleanly and re-raises KeyboardInterrupt.
        """
        if self._used:
            raise StreamError("a StreamPipeline runs once; build a new one for another stream")
        self._used = True
        source = open_source(source, fps=fps, realtime=realtime)
        latest = self.policy == "latest"
        self._to_preprocess = Channel(1 if latest else self.queue_size, "latest" if latest else "block",
                                      on_drop=lambda item: self.metrics.dropped_at("before_preprocess"))
        self._to_infer = Channel(self.max_batch if latest else self.queue_size, "latest" if latest else "block",
                                 on_drop=lambda item: self.metrics.dropped_at("before_infer"))
        self._to_postprocess = Channel(2, "block")
        self._to_sinks = Channel(self.queue_size, "block")
        device = _cuda_device(self.predictor)
        if device is not None:
            self._staging = _CudaStaging(device)
        context = dict(context or {})
        frame_path = self.predictor.frame_path
        context.update(source=source.name, policy=self.policy, max_batch=self.max_batch, frame_path=frame_path,
                       fused_into_infer=list(FUSED_STAGES) if frame_path == "frames" else [],
                       budget_ms=None if self.budget_s is None else 1e3 * self.budget_s,
                       realtime=bool(source.realtime and source.has_clock))
        opened = []
        interrupted = False
        try:
            for sink in self.sinks:
                sink.open({"task": self.predictor.task, "classes": list(self.predictor.classes),
                           "source": source.name})
                opened.append(sink)
            stages = [_Stage(name, target, args) for name, target, args in (
                ("source", self._source_stage, (source,)), ("preprocess", self._preprocess_stage, ()),
                ("infer", self._infer_stage, ()), ("postprocess", self._postprocess_stage, ()),
                ("sinks", self._sink_stage, ()))]
            for stage in stages:
                stage.thread.start()
            interrupted = self._wait(stages)
        except KeyboardInterrupt:
            # Ctrl-C before the stages ran (while sinks opened): nothing was inferred, nothing to deliver.
            interrupted = True
            self._cancelled = True
        finally:
            self.metrics.finished = time.monotonic()
            for sink in opened:
                try:
                    sink.close()
                except Exception as exc:
                    self._fail(StreamError(f"closing sink {type(sink).__name__} failed: {exc}"), [])
            report = self.metrics.report(**context)
            report["cancelled_by_user"] = self._cancelled
            report["interrupted"] = interrupted
            if self._error is not None:
                report["error"] = str(self._error)
                report["error_frame"] = getattr(self._error, "frame", None)
            self.report = report
        if interrupted:
            raise KeyboardInterrupt
        if self._error is not None:
            raise self._error
        return self.report

    def _wait(self, stages) -> bool:
        """Wait for every stage, with live progress; on Ctrl-C cancel and keep waiting. True if interrupted.

        Every step is guarded, so a Ctrl-C arriving at any point cancels and keeps waiting instead of leaving
        stage threads behind (or closing sinks under a running one)."""
        interrupted = False
        last_progress = time.monotonic()
        while True:
            try:
                running = [stage for stage in stages if not stage.done.is_set()]
                if not running:
                    break
                running[-1].done.wait(timeout=min(0.1, self.progress_interval_s))
                if self.on_progress is not None and time.monotonic() - last_progress >= self.progress_interval_s:
                    last_progress = time.monotonic()
                    self.on_progress(self.metrics.snapshot())
                if interrupted or self._stop.is_set():
                    break
            except KeyboardInterrupt:
                interrupted = True
                self.stop()
        # Stopping (error or cancel): the stages drain what they hold. A stage is hung when nothing moved for
        # `join_timeout_s`: no frame delivered and no stage finished.
        def progress():
            return self.metrics.processed, sum(stage.done.is_set() for stage in stages)

        seen, deadline = None, None
        while True:
            try:
                if deadline is None:
                    seen, deadline = progress(), time.monotonic() + self.join_timeout_s
                running = [stage for stage in stages if not stage.done.is_set()]
                if not running or time.monotonic() >= deadline:
                    break
                running[0].done.wait(timeout=0.05)
                if progress() != seen:
                    seen, deadline = progress(), time.monotonic() + self.join_timeout_s
            except KeyboardInterrupt:
                interrupted = True
                self.stop()
        hung = [stage.thread.name for stage in stages if not stage.done.is_set()]
        if hung:
            for channel in (self._to_preprocess, self._to_infer, self._to_postprocess, self._to_sinks):
                channel.abort()
            self._fail(StreamError(f"stream stages did not stop within {self.join_timeout_s:.0f} s: "
                                   f"{', '.join(hung)} (a source or sink blocked in its own code?)"), [])
            return interrupted
        # Every stage function has returned: each thread is only unwinding, so these joins end at once.
        for stage in stages:
            while True:
                try:
                    stage.thread.join()
                    break
                except KeyboardInterrupt:
                    interrupted = True
        return interrupted


class _Stage:
    """A stage thread and the event its function sets on return (what `_wait` trusts; see the module docstring)."""

    def __init__(self, name: str, target, args: tuple):
        self.done = threading.Event()

        def run() -> None:
            try:
                target(*args)
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name=f"{THREAD_PREFIX}-{name}", daemon=True)


def _stage_error(stage: str, exc: BaseException, frames: list) -> StreamError:
    where = f"frame {frames[0]}" if len(frames) == 1 else (f"frames {frames[0]}..{frames[-1]}" if frames else "")
    error = StreamError(f"{stage} failed" + (f" at {where}" if where else "") + f": {type(exc).__name__}: {exc}",
                        frame=frames[0] if frames else None)
    error.__cause__ = exc
    return error


def _ema(previous: float | None, value: float, weight: float = 0.3) -> float:
    return value if previous is None else (1 - weight) * previous + weight * value


def stream(predictor, source, policy: str = "latest", sinks=(), **options) -> dict:
    """One call: build a `StreamPipeline` with `options` and run it over `source`; returns the report."""
    run_keys = ("fps", "realtime", "context")
    run_options = {k: options.pop(k) for k in run_keys if k in options}
    return StreamPipeline(predictor, policy=policy, sinks=sinks, **options).run(source, **run_options)
