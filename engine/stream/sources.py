"""Frame sources: video files, DICOM cine loops, image folders, numpy arrays, live callables/iterables and capture
devices or streams read by FFmpeg (V4L2 capture cards, network streams).

A source is an iterable of `Frame(index, timestamp, pixels)`; `timestamp` is in seconds on the source's own clock
(presentation time for video, frame timing tags for DICOM, capture time for live sources). Every failure is a
`SourceError` that names the source and the frame index where it happened.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HTError, SourceError
from ..preprocess import check_frame
from .region import REGIONS, scan_region

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ts")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
DEFAULT_FPS = 30.0
# Ultrasound frames are at most a few megapixels; 8192x8192 (RGB counted thrice) bounds what a header may make a
# decoder allocate for one frame.
MAX_DICOM_FRAME_PIXELS = 3 * 8192 * 8192
# Transfer syntaxes whose pixel data can be read, given the decoders pydicom finds installed (see `dicom_support`).
_COMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
}


@dataclass
class Frame:
    """One source frame: its index in the source, its timestamp (s) and uint8 pixels (HxW gray or HxWx3 RGB)."""

    index: int
    timestamp: float
    pixels: np.ndarray
    #: the whole frame when `pixels` is a crop of it (a source opened with `region="scan"`), else None
    full: np.ndarray | None = None


class Source:
    """Base of every source. Subclasses implement `_frames()` (yield `Frame`s); `name` appears in every error."""

    name = "source"
    #: files and arrays have their own clock; `realtime=True` replays them at that clock (as a scanner would)
    has_clock = True

    def __init__(self, realtime: bool = False):
        self.realtime = realtime

    def _frames(self):
        raise NotImplementedError

    def __iter__(self):
        start_wall = None
        start_stamp = 0.0
        for frame in self._frames():
            if self.realtime and self.has_clock:
                if start_wall is None:
                    start_wall, start_stamp = time.monotonic(), frame.timestamp
                delay = start_wall + (frame.timestamp - start_stamp) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield frame

    def close(self) -> None:
        """Release files/devices. Iteration also releases them when it ends or fails."""

    def _error(self, frame: int | None, what: str, cause: BaseException | None = None) -> SourceError:
        where = f"{self.name}" + (f", frame {frame}" if frame is not None else "")
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return SourceError(f"{where}: {what}{detail}", source=self.name, frame=frame)

    def _checked(self, pixels, index: int) -> np.ndarray:
        try:
            return check_frame(pixels, index)
        except HTError as exc:
            raise self._error(index, "frame is not a uint8 gray/RGB image", exc) from exc


class ArraySource(Source):
    """A numpy array `[T,H,W]` (gray) or `[T,H,W,3]` (RGB); timestamps `index / fps`."""

    def __init__(self, frames, fps: float = DEFAULT_FPS, realtime: bool = False, name: str = "array"):
        super().__init__(realtime)
        frames = np.asarray(frames)
        if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[3] not in (1, 3)):
            raise SourceError(f"{name}: expected a [T,H,W] or [T,H,W,3] array, got shape {frames.shape}", source=name)
        if not fps > 0:
            raise SourceError(f"{name}: fps must be positive, got {fps}", source=name)
        self.frames, self.fps, self.name = frames, float(fps), name

    def __len__(self) -> int:
        return len(self.frames)

    def _frames(self):
        for index in range(len(self.frames)):
            yield Frame(index, index / self.fps, self._checked(self.frames[index], index))


class LiveSource(Source):
    """Frames from your code: an iterable, or a callable returning the next frame (None = end of stream).

    An item is a frame (uint8 array) or a `(timestamp_seconds, frame)` pair; frames without one are stamped with
    the capture time (seconds since the first frame). Exceptions raised by your code stop the stream with a
    `SourceError` naming the frame index; frames before it are still processed.
    """

    has_clock = False

    def __init__(self, producer, name: str | None = None):
        super().__init__(realtime=False)
        if not (callable(producer) or hasattr(producer, "__iter__")):
            raise SourceError(f"a live source must be callable or iterable, got {type(producer).__name__}")
        self.producer = producer
        self.name = name or f"live source {getattr(producer, '__name__', type(producer).__name__)}"

    def _items(self):
        if callable(self.producer) and not hasattr(self.producer, "__iter__"):
            while True:
                item = self.producer()
                if item is None:
                    return
                yield item
        else:
            yield from self.producer

    def _frames(self):
        items = self._items()
        start = None
        index = 0
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception as exc:
                raise self._error(index, "the frame producer raised", exc) from exc
            now = time.monotonic()
            start = now if start is None else start
            if isinstance(item, tuple) and len(item) == 2:
                timestamp, pixels = float(item[0]), item[1]
            else:
                timestamp, pixels = now - start, item
            yield Frame(index, timestamp, self._checked(pixels, index))
            index += 1


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FolderSource(Source):
    """Image files of a folder in natural order (frame2 before frame10); timestamps `index / fps`."""

    def __init__(self, folder, fps: float = DEFAULT_FPS, realtime: bool = False):
        super().__init__(realtime)
        self.folder = Path(folder)
        self.name = str(self.folder)
        self.fps = float(fps)
        self.paths = sorted((p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not self.paths:
            raise SourceError(f"{self.folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder",
                              source=self.name)

    def __len__(self) -> int:
        return len(self.paths)

    def _frames(self):
        from ..images import read_image

        for index, path in enumerate(self.paths):
            try:
                pixels = read_image(path)
            except HTError as exc:
                raise self._error(index, f"cannot read {path.name}", exc) from exc
            yield Frame(index, index / self.fps, self._checked(pixels, index))


class VideoSource(Source):
    """A video file decoded with PyAV (FFmpeg): MP4, AVI, MKV, MOV, WebM…; timestamps from presentation times.

    Gray pixel formats decode to HxW, others to RGB (`gray=True` forces the luma plane, e.g. for gray cines
    stored as YUV; the model converts RGB to gray anyway).
    A file that ends before the frame count its container declares is reported as truncated.
    """

    def __init__(self, path, realtime: bool = False, gray: bool | None = None):
        super().__init__(realtime)
        self.path = Path(path)
        self.name = str(self.path)
        self.gray = gray
        if not self.path.is_file():
            raise SourceError(f"{self.path}: video file does not exist", source=self.name, frame=None)

    def _open(self, av):
        try:
            return av.open(str(self.path))
        except Exception as exc:  # FFmpeg raises a family of av.error.* types and OSError
            raise self._error(0, "cannot open the video (corrupt, truncated or not a video)", exc) from exc

    def _frames(self):
        try:
            import av
        except ImportError as exc:
            raise self._error(None, "reading video needs PyAV: pip install 'ht-engine[stream]'") from exc
        container = self._open(av)
        index = 0
        try:
            if not container.streams.video:
                raise self._error(0, "the file has no video stream")
            stream = container.streams.video[0]
            try:
                stream.thread_type = "AUTO"
                # A stream whose codec FFmpeg cannot decode has no codec context at all.
                gray = self.gray if self.gray is not None else stream.codec_context.pix_fmt in ("gray", "gray8")
                declared, slack = stream.frames, 0
                if not declared and container.duration and stream.average_rate:
                    # Containers without a frame count (MKV) still record their duration in the header.
                    declared = int(round(container.duration / 1e6 * float(stream.average_rate)))
                    slack = max(2, declared // 50)
                decoded = container.decode(stream)
            except Exception as exc:  # PyAV raises av.error.*, AttributeError, ValueError for corrupt headers
                raise self._error(0, "the video stream cannot be decoded (unknown codec or corrupt header)",
                                  exc) from exc
            pixel_format = "gray" if gray else "rgb24"
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except Exception as exc:
                    raise self._error(index, "decoding failed (truncated or corrupt video)", exc) from exc
                timestamp = float(frame.time) if frame.time is not None else index / float(stream.average_rate or
                                                                                           DEFAULT_FPS)
                try:
                    pixels = frame.to_ndarray(format=pixel_format)
                except Exception as exc:  # a frame of a pixel format FFmpeg cannot convert
                    raise self._error(index, f"cannot convert the decoded frame to {pixel_format}", exc) from exc
                yield Frame(index, timestamp, self._checked(pixels, index))
                index += 1
            if declared and index < declared - slack:
                raise self._error(index, f"the video ended after {index} of the {declared} frames its container "
                                  f"declares (truncated file?)")
            if index == 0:
                raise self._error(0, "the video stream holds no decodable frame (truncated or empty file)")
        finally:
            container.close()


class CaptureSource(VideoSource):
    """A live device or stream opened by one of FFmpeg's input formats through PyAV: a V4L2 capture card or camera
    (`CaptureSource("/dev/video0", "v4l2", {"video_size": "1920x1080", "framerate": "30"})`), a network stream
    (`"udp://0.0.0.0:5000"` with `"mpegts"`), or FFmpeg's virtual `lavfi` devices (`"testsrc=size=320x240:rate=30"`).

    `url` goes to the input format as is (a device node, an address, a filter graph); `options` are that format's
    own options (`ffmpeg -h demuxer=v4l2` lists them), strings as FFmpeg takes them. The device paces itself: there
    is no file clock to replay (`realtime` has no effect) and no frame count to check; timestamps are the device's
    presentation times. Frames decode as a video file's do (gray pixel formats to HxW, others to RGB).
    """

    has_clock = False

    def __init__(self, url: str, input_format: str, options: dict | None = None, gray: bool | None = None):
        Source.__init__(self, realtime=False)
        if not input_format:
            raise SourceError(f"{url}: a capture source needs FFmpeg's input format (v4l2, lavfi, mpegts, …)")
        self.path = str(url)
        self.input_format = str(input_format)
        self.options = {str(key): str(value) for key, value in (options or {}).items()}
        self.name = f"{self.input_format}:{self.path}"
        self.gray = gray

    def _open(self, av):
        try:
            return av.open(self.path, format=self.input_format, options=self.options)
        except Exception as exc:  # FFmpeg raises a family of av.error.* types and OSError
            raise self._error(0, f"FFmpeg's {self.input_format!r} input cannot open {self.path!r} with options "
                              f"{self.options} (no such device, busy, or options the device does not support; "
                              f"`ffmpeg -f {self.input_format} -i ...` says more)", exc) from exc


def dicom_support() -> dict:
    """Transfer syntaxes readable now: {uid: (name, available, plugins)}, from pydicom's installed decoders."""
    from pydicom.pixels import get_decoder

    support = {
        "1.2.840.10008.1.2": ("Implicit VR Little Endian", True, ("pydicom",)),
        "1.2.840.10008.1.2.1": ("Explicit VR Little Endian", True, ("pydicom",)),
        "1.2.840.10008.1.2.2": ("Explicit VR Big Endian", True, ("pydicom",)),
    }
    for uid, name in _COMPRESSED_SYNTAXES.items():
        try:
            decoder = get_decoder(uid)
            support[uid] = (name, bool(decoder.is_available), tuple(decoder.available_plugins))
        except (NotImplementedError, ValueError):
            support[uid] = (name, uid == "1.2.840.10008.1.2.1.99", ("pydicom",))  # deflate is a file encoding
    return support


# Photometric interpretations the DICOM source turns into uint8 gray (MONOCHROME*) or RGB (all others).
DICOM_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                      "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")
# PS3.3 C.7.6.3.1.2: YBR_PARTIAL_420 is the partial-range (Y 16..235) transform of RGB. pydicom's JPEG decoding
# hands its components over unconverted (convert_color_space has no partial-range transform), so we invert it here.
_RGB_TO_YBR_PARTIAL = np.array([[0.2568, 0.5041, 0.0979], [-0.1482, -0.2910, 0.4392], [0.4392, -0.3678, -0.0714]])
_YBR_PARTIAL_OFFSET = np.array([16.0, 128.0, 128.0])
_FRAME_TIME_TAG = 0x00181063
_FRAME_TIME_VECTOR_TAG = 0x00181065


class DicomSource(Source):
    """A multi-frame DICOM (ultrasound cine, Enhanced US Volume) read frame by frame with pydicom.

    Pixels are decoded by pydicom's pixel handlers (pylibjpeg, pyjpegls and Pillow plugins; see `dicom_support`),
    colour follows PS3.3: palettes through `apply_color_lut`, YBR to RGB through the decoders and
    `convert_color_space`. Monochrome data of more than 8 bits is scaled to 8 by its VOI window (WindowCenter/
    WindowWidth, after the Modality LUT's rescale) when the file has one, else by its stored bit range.
    Timestamps from the attribute the FrameIncrementPointer names, else FrameTimeVector, FrameTime, the per-frame
    FrameReferenceDateTime / FrameAcquisitionDateTime, CineRate or RecommendedDisplayFrameRate; else `fps`.
    `region="scan"` crops every frame to the 2D tissue region of the Sequence of Ultrasound Regions
    (`engine.stream.region`); `Frame.full` then keeps the whole frame.
    """

    def __init__(self, path, realtime: bool = False, fps: float = DEFAULT_FPS, region: str = "full"):
        super().__init__(realtime)
        self.path = Path(path)
        self.name = str(self.path)
        if region not in REGIONS:
            raise SourceError(f"{self.path}: region must be one of {', '.join(REGIONS)}, got {region!r}",
                              source=self.name)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: DICOM file does not exist", source=self.name)
        try:
            import pydicom
        except ImportError as exc:
            raise SourceError(f"{self.path}: reading DICOM needs pydicom: pip install 'ht-engine[stream]'",
                              source=self.name) from exc
        try:
            # Deferred reading: element values over 1 KB (the pixel data) stay on disk until decoded.
            self.dataset = pydicom.dcmread(self.path, defer_size="1 KB")
            if self.dataset.file_meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
                self.dataset = pydicom.dcmread(self.path)  # a deflated stream has no offsets to read deferred values at
        except Exception as exc:
            raise self._error(None, "not a readable DICOM file", exc) from exc
        try:
            self._read_header(fps, region)
        except HTError:
            raise
        except Exception as exc:  # deferred elements are parsed on access: pydicom raises many types for bad ones
            raise self._error(None, "the DICOM header cannot be interpreted (corrupt or altered element)",
                              exc) from exc

    def _read_header(self, fps: float, region: str) -> None:
        ds = self.dataset
        missing = [key for key in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
                                   "PhotometricInterpretation") if key not in ds]
        if "PixelData" not in ds:
            missing.append("PixelData")
        if missing:
            raise self._error(0, f"no Image Pixel module: missing {', '.join(missing)} (is this an image object?)")
        self.frame_count = int(ds.get("NumberOfFrames", 1) or 1)
        self.photometric = str(ds.PhotometricInterpretation)
        if self.photometric not in DICOM_PHOTOMETRICS:
            raise self._error(0, f"PhotometricInterpretation {self.photometric} is not supported; expected one of "
                              f"{', '.join(DICOM_PHOTOMETRICS)}")
        bits = int(ds.BitsAllocated)
        if bits not in (8, 16):
            raise self._error(0, f"BitsAllocated {bits} is not supported; expected 8 or 16")
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
        support = dicom_support()
        if syntax not in support:
            raise self._error(0, f"TransferSyntaxUID {syntax} is not supported; expected one of "
                              f"{', '.join(name for name, _, _ in support.values())}")
        if not support[syntax][1]:
            raise self._error(0, f"pixel data is compressed as {support[syntax][0]} ({syntax}) and no installed "
                              f"decoder handles it (install pylibjpeg / python-gdcm plugins for pydicom)")
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel)
        if not 0 < pixels <= MAX_DICOM_FRAME_PIXELS:
            raise self._error(None, f"frames of {ds.Rows}x{ds.Columns}x{ds.SamplesPerPixel} pixels; expected 1 to "
                              f"{MAX_DICOM_FRAME_PIXELS} pixels per frame (a corrupt header, or a decompression bomb)")
        self.region = scan_region(ds, self.name) if region == "scan" else None
        self.held_frames = self._held_frames(syntax)
        if self.held_frames == 0:
            raise self._error(None, f"NumberOfFrames is {self.frame_count} but the pixel data holds 0 whole frames "
                              f"of {ds.Rows}x{ds.Columns}x{ds.SamplesPerPixel} at {ds.BitsAllocated} bits; expected "
                              f"them to match (truncated file or altered header?)")
        if self.held_frames is not None and self.held_frames > self.frame_count:
            raise self._error(None, f"NumberOfFrames is {self.frame_count} but the pixel data holds "
                              f"{self.held_frames} frames; expected them to match (altered header?)")
        self.timestamps = self._timestamps(fps)

    def __len__(self) -> int:
        return self.frame_count

    @property
    def region_info(self) -> dict:
        """Which part of the frames is streamed (for reports): the whole frame, or the ultrasound region used."""
        return {"region": "full"} if self.region is None else self.region.info()

    def _held_frames(self, syntax: str) -> int | None:
        """Whole frames the native (uncompressed) pixel data holds; None for encapsulated data."""
        if syntax in _COMPRESSED_SYNTAXES:
            return None
        ds = self.dataset
        element = ds.get_item("PixelData", keep_deferred=True)
        length = getattr(element, "length", None)
        if length is None:
            length = len(ds.PixelData)
        if length == 0xFFFFFFFF:  # undefined length: encapsulated fragments, counted by the decoder instead
            return None
        samples = 2 if self.photometric == "YBR_FULL_422" else int(ds.SamplesPerPixel)  # 4:2:2 stores 2 per pixel
        try:
            frame_bytes = int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated) // 8
        except (TypeError, ValueError) as exc:
            raise self._error(None, "Rows, Columns, SamplesPerPixel or BitsAllocated is not a number", exc) from exc
        if frame_bytes <= 0:
            raise self._error(None, f"frames of {ds.Rows}x{ds.Columns}x{samples} at {ds.BitsAllocated} bits hold "
                              f"no pixel; expected positive sizes")
        return length // frame_bytes

    def _timestamps(self, fps: float) -> np.ndarray:
        ds = self.dataset
        count = self.frame_count
        pointer = ds.get("FrameIncrementPointer")
        pointers = [] if pointer is None else [int(tag) for tag in _values(pointer)]
        vector = ds.get("FrameTimeVector")
        if _FRAME_TIME_VECTOR_TAG in pointers and (vector is None or len(vector) != count):
            raise self._error(None, f"FrameIncrementPointer names FrameTimeVector, which holds "
                              f"{0 if vector is None else len(vector)} values for {count} frames; expected one per "
                              f"frame")
        if vector is not None and len(vector) == count and _FRAME_TIME_TAG not in pointers:
            # The vector holds the increment before each frame (ms); its first entry is 0 by definition.
            increments = np.array([float(v) for v in vector], dtype=np.float64)
            increments[0] = 0.0
            return np.cumsum(increments) / 1000.0
        if "FrameTime" in ds and float(ds.FrameTime) > 0:
            return np.arange(count) * float(ds.FrameTime) / 1000.0
        per_frame = self._per_frame_times()
        if per_frame is not None:
            return per_frame
        for key in ("CineRate", "RecommendedDisplayFrameRate"):
            if key in ds and float(ds.get(key)) > 0:
                return np.arange(count) / float(ds.get(key))
        return np.arange(count) / float(fps)

    def _per_frame_times(self) -> np.ndarray | None:
        """Enhanced objects: seconds since the first frame from each frame's Frame Content date-times."""
        from pydicom.valuerep import DT

        groups = self.dataset.get("PerFrameFunctionalGroupsSequence")
        if groups is None or len(groups) != self.frame_count:
            return None
        times = []
        for item in groups:
            content = item.get("FrameContentSequence")
            stamp = None
            if content:
                stamp = content[0].get("FrameReferenceDateTime") or content[0].get("FrameAcquisitionDateTime")
            if not stamp:
                return None
            try:
                times.append(DT(stamp))
            except ValueError as exc:
                raise self._error(len(times), f"FrameReferenceDateTime/FrameAcquisitionDateTime {stamp!r} is not a "
                                  f"DICOM date-time (YYYYMMDDHHMMSS.FFFFFF)", exc) from exc
        return np.array([(t - times[0]).total_seconds() for t in times], dtype=np.float64)

    def _scaled(self, pixels: np.ndarray, bits: int) -> np.ndarray:
        """More than 8 bits → uint8: the VOI window (monochrome, after rescale) if the file has one, else the bit
        range."""
        ds = self.dataset
        signed = bool(int(ds.get("PixelRepresentation", 0))) and self.photometric.startswith("MONOCHROME")
        values = pixels.astype(np.float64)
        if self.photometric.startswith("MONOCHROME") and "WindowCenter" in ds and "WindowWidth" in ds:
            try:
                center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            except (TypeError, ValueError, IndexError) as exc:
                raise self._error(None, f"WindowCenter {ds.WindowCenter!r} / WindowWidth {ds.WindowWidth!r} are not "
                                  f"numbers; expected a VOI window or none", exc) from exc
            if width >= 1:
                values = values * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
                # PS3.3 C.11.2.1.2.1, the linear VOI function onto 0..255.
                scaled = ((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
                return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
        integers = pixels.astype(np.int64)
        if signed:
            integers = integers + (1 << (bits - 1))  # signed → offset binary before dropping low bits
        return np.clip(integers >> max(bits - 8, 0), 0, 255).astype(np.uint8)

    def _to_uint8(self, pixels: np.ndarray) -> np.ndarray:
        ds = self.dataset
        if self.photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            # The descriptor's first mapped value and entry bit depth are applied by pydicom (PS3.3 C.7.6.3.1.5).
            pixels = apply_color_lut(pixels, ds)
            lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            return pixels if pixels.dtype == np.uint8 else np.clip(
                pixels.astype(np.int64) >> max(lut_bits - 8, 0), 0, 255).astype(np.uint8)
        if pixels.dtype != np.uint8:
            pixels = self._scaled(pixels, int(ds.get("BitsStored", ds.BitsAllocated)))
        if self.photometric == "YBR_PARTIAL_420":
            rgb = (pixels.astype(np.float64) - _YBR_PARTIAL_OFFSET) @ np.linalg.inv(_RGB_TO_YBR_PARTIAL).T
            pixels = np.rint(np.clip(rgb, 0.0, 255.0)).astype(np.uint8)
        if self.photometric == "MONOCHROME1":
            pixels = 255 - pixels  # MONOCHROME1: 0 is white
        return pixels

    def _pixel_frames(self):
        from pydicom.pixels import iter_pixels, pixel_array

        syntax = str(self.dataset.file_meta.get("TransferSyntaxUID", ""))
        if self.photometric == "YBR_FULL_422" and syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            # pydicom 3.0's frame iterator misplaces uncompressed 4:2:2 frames after the first few; indexed
            # reads locate each frame correctly.
            for index in range(self.frame_count):
                yield pixel_array(self.path, index=index, as_rgb=True)
        elif syntax == "1.2.840.10008.1.2.1.99":
            yield from iter_pixels(self.dataset, as_rgb=True)  # the file parser of `iter_pixels` does not inflate
        else:
            yield from iter_pixels(self.path, as_rgb=True)

    def _frames(self):
        pixels_iter = self._pixel_frames()
        index = 0
        while True:
            try:
                pixels = next(pixels_iter)
            except StopIteration:
                break
            except Exception as exc:
                if self.held_frames is not None and index >= self.held_frames:
                    raise self._error(index, f"NumberOfFrames is {self.frame_count} but the pixel data holds "
                                      f"{self.held_frames} frames (truncated file?)") from exc
                raise self._error(index, "cannot decode the pixel data (truncated or corrupt file?)", exc) from exc
            if index >= self.frame_count:
                raise self._error(index, f"NumberOfFrames is {self.frame_count} but the pixel data holds more "
                                  f"frames; expected them to match (altered header?)")
            timestamp = float(self.timestamps[index])
            try:
                pixels = self._to_uint8(pixels)
            except Exception as exc:  # BitsStored/PixelRepresentation are only parsed here, and may be garbage
                raise self._error(index, "cannot convert the pixels to 8 bits (BitsStored or PixelRepresentation "
                                  "invalid?)", exc) from exc
            pixels = self._checked(pixels, index)
            if self.region is None:
                yield Frame(index, timestamp, pixels)
            else:
                yield Frame(index, timestamp, self.region.crop(pixels), full=pixels)
            index += 1
        if index < self.frame_count:
            raise self._error(index, f"NumberOfFrames is {self.frame_count} but the pixel data holds {index} "
                              f"frames (truncated file?)")


def _values(value) -> list:
    """A DICOM value of any multiplicity as a list (pydicom gives a single value unwrapped)."""
    from pydicom.multival import MultiValue

    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _first(value) -> float:
    return float(_values(value)[0])


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def open_source(spec, fps: float | None = None, realtime: bool = False, region: str = "full",
                input_format: str | None = None, input_options: dict | None = None) -> Source:
    """Any supported input → a `Source`.

    `spec`: a `Source`; a path to a video file, a DICOM file or a folder of images; a numpy array `[T,H,W(,3)]`;
    a callable returning frames (None ends); or an iterable of frames / `(timestamp, frame)` pairs.
    `fps` is the frame rate of arrays, folders and DICOM files without timing tags (default 30).
    `realtime` replays files and arrays at their own frame rate, as a scanner would deliver them.
    `region="scan"` crops DICOM frames to their ultrasound scan region (other inputs have none: refused).
    `input_format` (with its `input_options`): `spec` is a device or stream that FFmpeg input format opens
    (`CaptureSource`: "v4l2" for /dev/video*, "lavfi", "mpegts"…).
    """
    if input_format is not None:
        if not isinstance(spec, (str, Path)) or region != "full":
            raise SourceError(f"input format {input_format!r} opens a device or stream named by a string (and has no "
                              f"scan region); got {type(spec).__name__} with region={region!r}")
        return CaptureSource(str(spec), input_format, input_options)
    if input_options:
        raise SourceError(f"input options {input_options} need an input format (say, v4l2) to go to")
    rate = DEFAULT_FPS if fps is None else float(fps)
    if region not in REGIONS:
        raise SourceError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    if region != "full" and not (isinstance(spec, (str, Path)) and Path(spec).is_file() and _is_dicom(Path(spec))):
        raise SourceError(f"region={region!r} needs a DICOM file with a Sequence of Ultrasound Regions; "
                          f"{spec if isinstance(spec, (str, Path)) else type(spec).__name__} has none")
    if isinstance(spec, Source):
        spec.realtime = realtime or spec.realtime
        return spec
    if isinstance(spec, np.ndarray):
        return ArraySource(spec, fps=rate, realtime=realtime)
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if path.is_dir():
            return FolderSource(path, fps=rate, realtime=realtime)
        if not path.exists():
            raise SourceError(f"{path}: no such file or folder (expected a video, a DICOM file or a folder of "
                              f"images)", source=str(path))
        if _is_dicom(path):
            return DicomSource(path, realtime=realtime, fps=rate, region=region)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise SourceError(f"{path}: a single image is not a stream; use `ht-engine predict` or pass its folder",
                              source=str(path))
        return VideoSource(path, realtime=realtime)
    if callable(spec) or hasattr(spec, "__iter__"):
        return LiveSource(spec)
    raise SourceError(f"cannot stream from a {type(spec).__name__}: expected a path, a numpy array, a callable or an "
                      f"iterable of frames")
