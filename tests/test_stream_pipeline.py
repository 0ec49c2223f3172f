"""The streaming runtime: same results as `Predictor.predict`, the `all` and `latest` policies (overload: bounded
latency, counted drops, flat memory, last frame processed), errors with frame indices, clean stops, sinks."""

from __future__ import annotations

import json
import signal
import threading
import time
import tracemalloc

import numpy as np
import pytest

from engine.config import AUTHORS_PREPROCESSING
from engine.errors import InputError, SourceError, StreamError
from engine.package import save_package
from engine.phantom import phantom_cine
from engine.postprocess import results_from_logits
from engine.runner import Runner
from engine.runtime import Predictor
from engine.stream import (
    CallbackSink,
    Channel,
    CollectSink,
    JsonLinesSink,
    PngMaskSink,
    Sink,
    StreamPipeline,
    stream,
)
from engine.stream.pipeline import THREAD_PREFIX
from tests.helpers import small_config, small_tensors

ARCH = "biomedclip-vit-b16"


def stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_survives():
    yield
    assert stream_threads() == [], "a stream stage thread outlived its pipeline"


@pytest.fixture
def python_sigint():
    """Ctrl-C as a user's shell delivers it: Python's own SIGINT handler, installed again for the test (which also
    puts Python's handler back in the process, where a native library loaded by an earlier test may have replaced
    it), and the previous one restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def small_predictor(tmp_path, task="seg", seed=0):
    cfg = small_config(ARCH, task=task, num_classes=3, image_size=64, layers=2, extract_layers=[0, 1],
                       adapter_layers=[0, 1], preprocessing={**AUTHORS_PREPROCESSING, "size": 64})
    path = tmp_path / f"small_{task}.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=seed))
    return Predictor.load(path)


class SlowPredictor:
    """Stands in for a model whose inference takes `infer_s` per batch (sleep: no CPU burned): a `StreamModel` on
    the host "logits" path."""

    task = "seg"
    classes = ["background", "lesion"]
    frame_path = "logits"

    def __init__(self, infer_s: float, fail_at: int | None = None):
        self.infer_s = infer_s
        self.fail_at = fail_at
        self.seen = []

    def preprocess(self, frames):
        # The frame's first pixel rides through the batch, so each result can be traced back to its frame.
        return np.stack([np.full((3, 4, 4), float(f.flat[0]), dtype=np.float32) for f in frames])

    def prepare(self, frames):
        return self.preprocess(frames)

    def infer_batch(self, batch, first_index=0):
        ids = [int(v) for v in batch[:, 0, 0, 0]]
        self.seen.extend(ids)
        if self.fail_at is not None and self.fail_at in ids:
            raise RuntimeError(f"device lost while running frame id {self.fail_at}")
        time.sleep(self.infer_s)
        logits = np.zeros((len(batch), 2, 4, 4), dtype=np.float32)
        logits[:, 1] = (batch[:, 0] % 2) * 2.0 - 1.0  # odd ids → all lesion, even → all background
        return logits

    def results(self, logits, sizes, first_index=0):
        return results_from_logits(self.task, logits, sizes, self.classes, first_index=first_index)


def numbered_frames(count: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Frames whose first pixel is their index mod 256 (checks which frame a result came from)."""
    frames = np.random.default_rng(0).integers(0, 256, size=(count, height, width), dtype=np.uint8)
    frames[:, 0, 0] = np.arange(count) % 256
    return frames


def assert_results_equal(stream_results, expected):
    assert len(stream_results) == len(expected)
    for item, want in zip(stream_results, expected):
        got = item.result
        assert got.index == want.index == item.frame.index
        assert (got.height, got.width) == (want.height, want.width)
        if want.mask is not None:
            np.testing.assert_array_equal(got.mask, want.mask)
        else:
            np.testing.assert_array_equal(got.probabilities, want.probabilities)


# --- same results as Predictor.predict ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["seg", "cls"])
def test_stream_equals_predict(tmp_path, task):
    predictor = small_predictor(tmp_path, task)
    cine = phantom_cine(7, 45, 70, seed=2)  # odd, non-square frames
    expected = predictor.predict(list(cine.frames), batch_size=1)
    sink = CollectSink()
    report = stream(predictor, cine.frames, policy="all", max_batch=1, sinks=[sink])
    assert_results_equal(sink.results, expected)
    assert report["processed"] == 7 and report["dropped"] == 0


def test_stream_micro_batches_equal_predict_batches(tmp_path):
    predictor = small_predictor(tmp_path, "seg", seed=1)
    cine = phantom_cine(8, 40, 52, seed=4)
    rgb = np.repeat(cine.frames[..., None], 3, axis=3)  # RGB input takes the model's gray conversion
    # Batch composition follows timing; a source that is paused until the pipeline is ready gives full batches.
    expected = predictor.predict(list(rgb), batch_size=4)
    sink = CollectSink()
    report = stream(predictor, rgb, policy="all", max_batch=4, batch_wait_ms=2000, sinks=[sink])
    assert report["batch_sizes"] == {"4": 2}
    assert_results_equal(sink.results, expected)


def test_stream_takes_the_grid_path_of_the_optimized_runner(tmp_path):
    reference = small_predictor(tmp_path, "seg", seed=3)
    optimized = Predictor.load(reference.source, backend="optimized")
    assert optimized.frame_path == "grid"
    cine = phantom_cine(5, 37, 58, seed=5)
    sink = CollectSink()
    report = stream(optimized, cine.frames, policy="all", max_batch=2, sinks=[sink])
    assert_results_equal(sink.results, optimized.predict(list(cine.frames), batch_size=1))
    assert report["frame_path"] == "grid" and report["fused_into_infer"] == []


def frames_predictor(host: Predictor, calls: list) -> Predictor:
    """A predictor whose runner has the whole frame path (`run_frames`), made here from `host`'s own predict."""

    def run_frames(frames):
        calls.append([(frame.dtype, frame.shape) for frame in frames])
        results = host.predict(frames, batch_size=len(frames))
        return np.stack([r.mask if host.task == "seg" else r.probabilities for r in results])

    runner = Runner(run=host.runner.run, uses_torch=True, device="cpu", precision="fp32", run_frames=run_frames)
    return Predictor(runner, task=host.task, classes=host.classes, preprocessing=host.preprocessing,
                     image_size=host.image_size, backend="frames-test", source=host.source)


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_stream_frame_path_passes_uint8_frames_to_the_runner(tmp_path, task):
    host = small_predictor(tmp_path, task, seed=2)
    calls = []
    predictor = frames_predictor(host, calls)
    assert predictor.frame_path == "frames"
    cine = phantom_cine(8, 41, 66, seed=6)
    sink = CollectSink()
    report = stream(predictor, cine.frames, policy="all", max_batch=4, batch_wait_ms=2000, sinks=[sink])
    assert_results_equal(sink.results, host.predict(list(cine.frames), batch_size=4))
    assert calls == [[(np.dtype(np.uint8), (41, 66))] * 4] * 2  # raw frames, micro-batched, not preprocessed
    assert report["frame_path"] == "frames" and report["fused_into_infer"] == ["preprocess", "postprocess"]
    assert report["latency_ms"]["preprocess"]["count"] == 8


# --- policies ---------------------------------------------------------------------------------------------------

def test_all_policy_every_frame_once_in_order():
    predictor = SlowPredictor(0.002)
    frames = numbered_frames(200)
    order = []
    report = stream(predictor, frames, policy="all", max_batch=4,
                    sinks=[CallbackSink(lambda item: order.append((item.frame.index, item.result.index)))])
    assert order == [(i, i) for i in range(200)]
    assert sorted(predictor.seen) == sorted(int(v) for v in frames[:, 0, 0])
    assert report["processed"] == 200 and report["dropped"] == 0 and report["frames_in"] == 200
    # Results belong to their frames: odd first pixel → lesion mask.
    assert report["latency_ms"]["end_to_end"]["count"] == 200


def test_all_policy_applies_backpressure():
    predictor = SlowPredictor(0.01)
    produced = []

    def producer():
        for index in range(30):
            produced.append(time.monotonic())
            yield numbered_frames(1)[0]

    delivered = []
    stream(predictor, producer(), policy="all", max_batch=1, queue_size=2,
           sinks=[CallbackSink(lambda item: delivered.append(time.monotonic()))])
    # With 2-slot queues the source cannot run more than a few frames ahead of inference.
    ahead = [sum(p <= d for p in produced) - (i + 1) for i, d in enumerate(delivered)]
    assert max(ahead) <= 2 * 2 + 3


def test_latest_under_overload_bounded_latency_drops_flat_memory_last_frame():
    infer_s = 0.03
    count = 500
    frames = numbered_frames(count, 96, 128)
    predictor = SlowPredictor(infer_s)
    memory = {}
    processed = []

    def record(item):
        processed.append(item.frame.index)
        if len(processed) == 5:
            memory["early"] = tracemalloc.get_traced_memory()[0]
        memory["late"] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        # A source 10x faster than inference: a frame every infer_s / 10, replayed in real time.
        report = stream(predictor, frames, policy="latest", fps=10 / infer_s, realtime=True,
                        sinks=[CallbackSink(record)])
    finally:
        tracemalloc.stop()
    e2e = report["latency_ms"]["end_to_end"]
    assert e2e["p99"] < 3 * infer_s * 1e3, f"p99 latency {e2e['p99']:.1f} ms >= 3 inference times"
    assert report["frames_in"] == count
    assert report["dropped"] == count - report["processed"] > count / 2
    assert report["dropped"] == sum(report["dropped_by_stage"].values())
    assert processed[-1] == count - 1, "the last frame of the stream must be processed"
    assert processed == sorted(processed) and len(set(processed)) == len(processed)
    # Flat memory: 450+ frames of 12 KB went through; holding on to them would add megabytes.
    growth = memory["late"] - memory["early"]
    assert growth < 256 * 1024, f"memory grew by {growth / 1024:.0f} KiB over the stream"


def test_latest_budget_drops_stale_frames_from_batches():
    predictor = SlowPredictor(0.03)
    report = stream(predictor, numbered_frames(120), policy="latest", max_batch=4, budget_ms=5.0, fps=300,
                    realtime=True)
    assert report["batch_sizes"] and report["dropped_by_stage"]["before_infer"] > 0
    assert report["processed"] + report["dropped"] == 120


def test_channel_latest_keeps_newest_and_counts_drops():
    drops = []
    channel = Channel(2, "latest", on_drop=drops.append)
    for value in range(5):
        assert channel.put(value)
    assert drops == [0, 1, 2]
    channel.close()
    assert channel.get(4) == [3, 4] and channel.get(1) is None


# --- errors and stops ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["all", "latest"])
def test_source_raising_at_frame_k_delivers_earlier_results(policy):
    k = 12
    frames = numbered_frames(40)

    def producer():
        for index, frame in enumerate(frames):
            if index == k:
                raise OSError("capture card unplugged")
            yield frame

    sink = CollectSink()
    pipeline = StreamPipeline(SlowPredictor(0.002), policy=policy, sinks=[sink])
    with pytest.raises(SourceError, match=f"frame {k}: .*OSError: capture card unplugged") as info:
        pipeline.run(producer())
    assert info.value.frame == k
    indices = [item.frame.index for item in sink.results]
    if policy == "all":
        assert indices == list(range(k))
    else:
        assert indices[-1] == k - 1 and indices == sorted(indices)
    assert pipeline.report["error_frame"] == k and "capture card unplugged" in pipeline.report["error"]


def test_truncated_video_stream_delivers_frames_before_the_cut(tmp_path):
    pytest.importorskip("av")
    from engine.phantom import write_video

    path = tmp_path / "cut.mkv"
    frames = numbered_frames(20)
    write_video(path, frames, fps=25)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    sink = CollectSink()
    with pytest.raises(SourceError, match=r"cut\.mkv, frame \d+: .*truncated") as info:
        stream(SlowPredictor(0.001), path, policy="all", sinks=[sink])
    assert [item.frame.index for item in sink.results] == list(range(info.value.frame))
    assert info.value.frame > 0


def test_dicom_without_pixel_data_fails_before_streaming(tmp_path):
    pytest.importorskip("pydicom")
    import pydicom

    from engine.phantom import write_dicom

    path = tmp_path / "header_only.dcm"
    write_dicom(path, numbered_frames(3), fps=25)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(SourceError, match=r"header_only\.dcm, frame 0: no Image Pixel module"):
        stream(SlowPredictor(0.001), path, policy="all")


def test_inference_failure_names_the_frame_and_stops_the_source():
    frames = numbered_frames(60)
    sink = CollectSink()
    with pytest.raises(StreamError, match="inference failed at frame 9: RuntimeError: device lost") as info:
        stream(SlowPredictor(0.002, fail_at=9), frames, policy="all", max_batch=1, sinks=[sink])
    assert info.value.frame == 9
    assert [item.frame.index for item in sink.results] == list(range(9))


def test_sink_failure_is_reported():
    def explode(item):
        if item.frame.index == 3:
            raise ValueError("disk full")

    with pytest.raises(StreamError, match="sink failed at frame 3: ValueError: disk full"):
        stream(SlowPredictor(0.001), numbered_frames(30), policy="all", sinks=[CallbackSink(explode)])


def test_stop_from_a_sink_cancels_cleanly():
    frames = numbered_frames(300)
    pipeline = None
    delivered = []

    def on_result(item):
        delivered.append(item.frame.index)
        if len(delivered) == 5:
            pipeline.stop()

    pipeline = StreamPipeline(SlowPredictor(0.005), policy="all", max_batch=2, sinks=[CallbackSink(on_result)])
    report = pipeline.run(frames)
    assert report["cancelled_by_user"] and 5 <= report["processed"] < 300
    assert delivered == list(range(len(delivered)))


def test_ctrl_c_stops_cleanly_and_delivers_finished_results(python_sigint):
    import _thread

    delivered = []
    pipeline = StreamPipeline(SlowPredictor(0.01), policy="all", sinks=[CallbackSink(
        lambda item: delivered.append(item.frame.index))])
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(numbered_frames(2000))
    finally:
        timer.cancel()
    assert pipeline.report["cancelled_by_user"]
    assert 0 < pipeline.report["processed"] == len(delivered) < 2000
    assert delivered == list(range(len(delivered)))


def test_a_blocked_source_is_reported_not_waited_on_forever():
    release = threading.Event()

    def stuck():
        yield numbered_frames(1)[0]
        release.wait(5.0)  # a capture call that never returns while the stream stops
        return

    pipeline = StreamPipeline(SlowPredictor(0.001), policy="all", join_timeout_s=0.3)
    start = time.monotonic()
    threading.Timer(0.2, pipeline.stop).start()
    try:
        with pytest.raises(StreamError, match="did not stop within .*ht-stream-source"):
            pipeline.run(stuck())
        assert time.monotonic() - start < 3.0
    finally:
        release.set()
        for thread in stream_threads():
            thread.join(timeout=5.0)


def test_bad_options():
    with pytest.raises(InputError, match="unknown policy"):
        StreamPipeline(SlowPredictor(0.0), policy="newest")
    with pytest.raises(InputError, match="max_batch"):
        StreamPipeline(SlowPredictor(0.0), max_batch=0)
    pipeline = StreamPipeline(SlowPredictor(0.0), policy="all")
    pipeline.run(numbered_frames(2))
    with pytest.raises(StreamError, match="runs once"):
        pipeline.run(numbered_frames(2))


# --- sinks and metrics -----------------------------------------------------------------------------------------

def test_json_lines_png_and_overlay_sinks(tmp_path):
    pytest.importorskip("av")
    from PIL import Image

    from engine.stream import OverlayVideoSink, VideoSource

    frames = numbered_frames(6, 31, 44)  # odd sizes
    sinks = [JsonLinesSink(tmp_path / "frames.jsonl"), PngMaskSink(tmp_path / "masks"),
             OverlayVideoSink(tmp_path / "overlay.mp4")]
    report = stream(SlowPredictor(0.001), frames, policy="all", fps=20, sinks=sinks)
    records = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    assert [r["timestamp"] for r in records] == pytest.approx([i / 20 for i in range(6)])
    for record, frame in zip(records, frames):
        lesion = frame[0, 0] % 2 == 1
        assert record["mask_area"] == {"background": 0 if lesion else 31 * 44, "lesion": 31 * 44 if lesion else 0}
        assert record["latency_ms"] > 0
    mask = np.asarray(Image.open(tmp_path / "masks" / "mask_000003.png"))
    assert mask.shape == (31, 44) and (mask == 1).all()
    video = list(VideoSource(tmp_path / "overlay.mp4"))
    assert len(video) == 6 and video[0].pixels.shape == (32, 44, 3)
    assert [f.timestamp for f in video] == pytest.approx([i / 20 for i in range(6)], abs=2e-3)
    assert report["processed"] == 6


def test_png_sink_refuses_classification_models(tmp_path):
    predictor = SlowPredictor(0.0)
    predictor.task = "cls"
    with pytest.raises(InputError, match="segmentation model"):
        stream(predictor, numbered_frames(2), sinks=[PngMaskSink(tmp_path / "m")])


def test_report_has_stage_latencies_and_progress_snapshots():
    snapshots = []
    report = stream(SlowPredictor(0.01), numbered_frames(40), policy="all", on_progress=snapshots.append,
                    progress_interval_s=0.05)
    for stage in ("queue", "preprocess", "infer", "postprocess", "sink", "end_to_end"):
        stats = report["latency_ms"][stage]
        assert stats["count"] == 40 and 0 <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert report["latency_ms"]["infer"]["p50"] >= 10.0
    assert report["throughput_fps"] > 0 and snapshots and snapshots[-1]["processed"] <= 40
    json.dumps(report)


def test_latency_reservoir_stays_fixed_size():
    from engine.stream import LatencyReservoir

    stats = LatencyReservoir(capacity=100)
    values = np.random.default_rng(0).uniform(0.0, 1.0, size=5000)
    for value in values:
        stats.add(float(value))
    assert stats.samples.shape == (100,) and stats.count == 5000
    assert stats.maximum == values.max()
    assert abs(stats.percentile(50) - 0.5) < 0.15


@pytest.mark.requires_cuda
def test_cuda_pinned_async_staging_equals_predict(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible: the pinned-memory/async-copy path runs only on a GPU")
    cfg = small_config(ARCH, task="seg", num_classes=3, image_size=64, layers=2, extract_layers=[0, 1],
                       adapter_layers=[0, 1], preprocessing={**AUTHORS_PREPROCESSING, "size": 64})
    path = tmp_path / "gpu.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=0))
    predictor = Predictor.load(path, device="cuda")
    cine = phantom_cine(6, 45, 70, seed=2)
    expected = predictor.predict(list(cine.frames), batch_size=1)
    sink = CollectSink()
    pipeline = StreamPipeline(predictor, policy="all", max_batch=1, sinks=[sink])
    pipeline.run(cine.frames)
    assert pipeline._staging is not None
    assert_results_equal(sink.results, expected)


def test_draw_overlay_tints_outlines_and_leaves_background():
    from engine.postprocess import FrameResult
    from engine.stream import draw_overlay

    pixels = np.random.default_rng(1).integers(0, 256, size=(21, 30), dtype=np.uint8)
    mask = np.zeros((21, 30), dtype=np.uint8)
    mask[5:15, 8:20] = 1
    out = draw_overlay(pixels, FrameResult(0, 21, 30, mask=mask, classes=["bg", "lesion"]), alpha=0.5)
    far = np.ones_like(mask, dtype=bool)
    far[3:17, 6:22] = False
    np.testing.assert_array_equal(out[far], np.repeat(pixels[far][:, None], 3, axis=1))
    np.testing.assert_array_equal(out[4, 10], [255, 64, 64])  # contour just outside the lesion
    np.testing.assert_array_equal(out[5, 10], [255, 64, 64])  # and just inside
    inner = pixels[10, 12].astype(np.uint16)
    np.testing.assert_array_equal(out[10, 12], (128 * inner + 128 * np.array([255, 64, 64])) >> 8)

    probabilities = np.array([0.25, 0.75], dtype=np.float32)
    out = draw_overlay(pixels, FrameResult(0, 21, 30, probabilities=probabilities, classes=["a", "b"]))
    bar = max(4, 21 // 40)
    assert (out[:bar, :22].reshape(-1, 3) == [64, 200, 64]).all() and (out[:bar, 23:] == 0).all()


class _RecordingSink(Sink):
    """Records what it was given, and whether anything arrived after `close()` (a sink closed under its thread)."""

    def __init__(self, interrupt_at: int | None = None):
        self.written, self.after_close, self.closed = [], [], False
        self.interrupt_at = interrupt_at

    def write(self, item) -> None:
        if self.closed:
            self.after_close.append(item.frame.index)
        if item.frame.index == self.interrupt_at:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # a real Ctrl-C, mid-stream
        if self.interrupt_at is not None and item.frame.index >= self.interrupt_at:
            time.sleep(0.03)  # the sink thread is busy while the main thread handles the interrupt
        self.written.append(item.frame.index)

    def close(self) -> None:
        self.closed = True


def test_sigint_while_sinks_write_loses_no_inferred_frame(python_sigint):
    first, second = _RecordingSink(interrupt_at=5), _RecordingSink()
    predictor = SlowPredictor(0.002)
    pipeline = StreamPipeline(predictor, policy="all", max_batch=2, sinks=[first, second])
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(numbered_frames(400))
    # threading.enumerate, not is_alive(): an interrupted join can mark a running thread as stopped.
    assert [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)] == []
    report = pipeline.report
    assert report["interrupted"] and report["cancelled_by_user"]
    assert first.after_close == second.after_close == []
    assert first.written == second.written == sorted(predictor.seen) == list(range(report["processed"]))
    assert report["frames_in"] == report["processed"] + report["dropped"] + report["cancelled"]
    assert report["processed"] < 400
