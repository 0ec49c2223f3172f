"""Real-time streams: sources (video, DICOM, folders, arrays, live callables, capture devices) → pipelined inference
→ sinks.

    from engine import Predictor
    from engine.stream import stream, OverlayVideoSink

    report = stream(Predictor.load("model.htpkg"), "cine.dcm", policy="latest", realtime=True,
                    sinks=[OverlayVideoSink("overlay.mp4")])
"""

from .metrics import LatencyReservoir, StreamMetrics
from .pipeline import POLICIES, Channel, StreamPipeline, StreamResult, stream
from .region import RegionPasteSink, ScanRegion, scan_region
from .sinks import (
                    CallbackSink,
                    CollectSink,
                    DicomSegSink,
                    JsonLinesSink,
                    OverlayVideoSink,
                    PngMaskSink,
                    Sink,
                    draw_overlay,
                    frame_record,
)
from .sources import (
                    ArraySource,
                    CaptureSource,
                    DicomSource,
                    FolderSource,
                    Frame,
                    LiveSource,
                    Source,
                    VideoSource,
                    dicom_support,
                    open_source,
)

__all__ = [
    "ArraySource", "CallbackSink", "CaptureSource", "Channel", "CollectSink", "DicomSegSink", "DicomSource",
    "FolderSource", "Frame", "JsonLinesSink", "LatencyReservoir", "LiveSource", "OverlayVideoSink", "POLICIES",
    "PngMaskSink", "RegionPasteSink", "ScanRegion", "Sink", "Source", "StreamMetrics", "StreamPipeline", "StreamResult",
    "VideoSource", "dicom_support", "draw_overlay", "frame_record", "open_source", "scan_region", "stream",
]
