"""Where stream results go: an overlay video, PNG masks, JSON lines per frame, or your own callback.

A sink has `open(info)` (info: task, classes, source), `write(StreamResult)` and `close()`; the pipeline calls
them from its sink thread, in frame order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import check_output_directory, check_output_file
from ..images import draw_overlay, mask_image


class Sink:
    def open(self, info: dict) -> None:
        self.info = info

    def write(self, item) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CallbackSink(Sink):
    """Calls `fn(StreamResult)` for every result (your display, your network sender, a test's list.append)."""

    def __init__(self, fn):
        self.fn = fn

    def write(self, item) -> None:
        self.fn(item)


class CollectSink(Sink):
    """Keeps every result in `results` (tests, notebooks). Memory grows with the stream: not for live runs."""

    def __init__(self):
        self.results = []

    def write(self, item) -> None:
        self.results.append(item)


def frame_record(item) -> dict:
    """The JSON-lines record of one result: index, timestamp, latency, mask areas or class probabilities."""
    result = item.result
    record = {"index": item.frame.index, "timestamp": round(item.frame.timestamp, 6),
              "latency_ms": round(1e3 * item.latency_s, 3)}
    if result.mask is not None:
        counts = np.bincount(result.mask.ravel(), minlength=len(result.classes))
        record["mask_area"] = {name: int(n) for name, n in zip(result.classes, counts)}
        record["mask_fraction"] = {name: float(n) / result.mask.size for name, n in zip(result.classes, counts)}
    if result.probabilities is not None:
        record["probabilities"] = {name: float(p) for name, p in zip(result.classes, result.probabilities)}
        record["label"] = result.label
    return record


class JsonLinesSink(Sink):
    """One JSON object per line and frame (see `frame_record`), flushed as it goes so a live reader can follow."""

    def __init__(self, path):
        self.path = Path(path)
        self.handle = None

    def open(self, info: dict) -> None:
        super().open(info)
        check_output_file(self.path, "JSON-lines file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")

    def write(self, item) -> None:
        self.handle.write(json.dumps(frame_record(item)) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class PngMaskSink(Sink):
    """`<dir>/mask_<index>.png` per frame: palette PNGs whose pixel values are the class indices, shown in the class
    colours (segmentation models only)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def open(self, info: dict) -> None:
        super().open(info)
        if info["task"] != "seg":
            raise InputError(f"PNG masks need a segmentation model; this one is a {info['task']!r} model "
                             f"(use the JSON-lines sink for class probabilities)")
        if len(info["classes"]) > 256:
            raise InputError("PNG masks hold at most 256 classes")
        check_output_directory(self.folder, "mask folder")
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, item) -> None:
        mask_image(item.result.mask.astype(np.uint8)).save(self.folder / f"mask_{item.frame.index:06d}.png")


class OverlayVideoSink(Sink):
    """An H.264 MP4 (or FFV1 MKV) of the processed frames with their masks drawn over them.

    Each frame is shown at its own source timestamp, so frames dropped by the `latest` policy appear as the
    previous result held on screen, and the video keeps the source's real timing. `decorate(item, rgb) -> rgb`, when
    given, draws more over each overlay frame (the demo's ground truth, Dice and latency).
    """

    def __init__(self, path, crf: int = 20, decorate=None):
        self.path = Path(path)
        self.crf = crf
        self.decorate = decorate
        self.container = None
        self.stream = None
        self.first_timestamp = None
        self.last_pts = -1

    def open(self, info: dict) -> None:
        super().open(info)
        import av  # noqa: F401  (fail at open, not at the first frame, when PyAV is missing)

        if self.path.suffix.lower() not in (".mp4", ".mkv"):
            raise InputError(f"{self.path}: overlay videos are .mp4 (H.264) or .mkv (FFV1)")
        check_output_file(self.path, "overlay video")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _start(self, height: int, width: int) -> None:
        from fractions import Fraction

        import av

        mp4 = self.path.suffix.lower() == ".mp4"
        self.container = av.open(str(self.path), mode="w")
        self.stream = self.container.add_stream("libx264" if mp4 else "ffv1", rate=30)
        self.stream.pix_fmt = "yuv420p" if mp4 else "bgr0"
        if mp4:
            # One encoder thread: the encoder shares the CPU with inference; frames come one at a time anyway.
            self.stream.options = {"crf": str(self.crf), "preset": "veryfast", "threads": "1"}
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        # Millisecond presentation times (variable frame rate): frames keep their source timing.
        self.time_base = Fraction(1, 1000)
        self.stream.time_base = self.time_base
        self.stream.codec_context.time_base = self.time_base
        self.size = (height, width)

    def write(self, item) -> None:
        import av

        pixels = item.frame.pixels
        if self.container is None:
            self._start(*pixels.shape[:2])
            self.first_timestamp = item.frame.timestamp
        if pixels.shape[:2] != self.size:
            raise InputError(f"frame {item.frame.index} is {pixels.shape[:2]}, the overlay video is {self.size}: "
                             f"one video holds frames of one size")
        rgb = draw_overlay(pixels, item.result, legend=True)
        if self.decorate is not None:
            rgb = self.decorate(item, rgb)
        if rgb.shape[0] % 2 or rgb.shape[1] % 2:
            rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        pts = int(round(1000 * (item.frame.timestamp - self.first_timestamp)))
        frame.pts = max(pts, self.last_pts + 1)  # presentation times must increase
        frame.time_base = self.time_base
        self.last_pts = frame.pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None


class DicomSegSink(Sink):
    """A DICOM Segmentation object (`engine.dicom_seg`) of the processed frames of a DICOM source, written when the
    stream ends (also after an error: the frames finished by then). Under `latest` only the processed frames are in
    it, each referencing its own source frame. `provenance`: `Predictor.provenance()` (algorithm identification).
    `segmentation_type`: "binary" (the masks) or "fractional" (the per-pixel class probabilities: the stream's
    predictor must keep them, `Predictor.with_probability_maps()`; kept as uint8 fractions of 255 until the end)."""

    def __init__(self, path, provenance: dict, segmentation_type: str = "binary"):
        from ..dicom_seg import SEGMENTATION_TYPES

        if segmentation_type not in SEGMENTATION_TYPES:
            raise InputError(f"segmentation type {segmentation_type!r} is not one of {', '.join(SEGMENTATION_TYPES)}")
        self.path = Path(path)
        self.provenance = provenance
        self.segmentation_type = segmentation_type
        self.masks, self.frame_numbers = [], []

    def open(self, info: dict) -> None:
        from ..dicom_seg import check_dicom_source, check_seg_output

        super().open(info)
        if info["task"] != "seg":
            raise InputError(f"a DICOM Segmentation needs a segmentation model; this one is a {info['task']!r} "
                             f"model (use the JSON-lines sink for class probabilities)")
        check_dicom_source(info["source"], "--dicom-seg")
        check_seg_output(self.path, "--dicom-seg")

    def write(self, item) -> None:
        from ..dicom_seg import fractional_planes

        if self.segmentation_type == "binary":
            self.masks.append(item.result.mask)
        elif item.result.probability_maps is None:
            raise InputError(f"frame {item.frame.index}: a fractional DICOM Segmentation needs per-pixel class "
                             f"probabilities; stream with Predictor.with_probability_maps()")
        else:
            self.masks.append(fractional_planes(item.result.probability_maps, len(self.info["classes"])))
        self.frame_numbers.append(item.frame.index)

    def close(self) -> None:
        from ..dicom_seg import write_dicom_seg

        if self.masks:
            write_dicom_seg(self.path, self.info["source"], self.masks, self.info["classes"], self.provenance,
                            self.frame_numbers, self.segmentation_type)
