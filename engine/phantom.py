"""Synthetic B-mode ultrasound cine loops with ground truth (tests and the demo; no patient data ever enters here).

The probe sits at the apex of a sector (fan). Echo amplitudes are built in beam coordinates (depth along a beam,
angle across beams), so an acoustic shadow runs along the beams below a strong reflector and reverberations are
arcs at multiples of the reflector's depth, as on a scanner. Per frame:

    amplitude = tissue echogenicity × lesions (hypoechoic) × shadow × reverberation × depth gain × speckle

Speckle is the magnitude of a complex Gaussian field (Rayleigh-distributed at every frame); it decorrelates slowly
over time (an AR(1) process in the complex field), as tissue speckle does under a still probe. Amplitudes are log
compressed to a 50 dB display range. Lesions drift and breathe (their radii and orientation change smoothly), and
their masks (inside the sector) are the ground truth.

Writers: `write_video` (PyAV: H.264 in MP4, FFV1 in MKV/AVI) and `write_dicom` (pydicom: Ultrasound Multi-frame
Image Storage, MONOCHROME2 / RGB / YBR_FULL_422 / PALETTE COLOR, uncompressed, RLE, JPEG-LS, JPEG 2000 or JPEG
Baseline, with frame timing tags and a Sequence of Ultrasound Regions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

DYNAMIC_RANGE_DB = 50.0
DISPLAY_OFFSET_DB = 24.0  # mean tissue (0 dB) shows mid-gray
SPECKLE_CORRELATION = 0.8  # frame-to-frame correlation of the complex speckle field
DICOM_PHOTOMETRICS = ("MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR")
# What each transfer syntax of the writer may hold (PS3.5 §8.2): RLE, JPEG-LS and JPEG 2000 are written lossless, so
# no palette index is altered; subsampled YBR_FULL_422 exists uncompressed and as JPEG's own 4:2:2.
DICOM_SYNTAX_PHOTOMETRICS = {
    "explicit-little": ("MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR"),
    "rle": ("MONOCHROME2", "RGB", "PALETTE COLOR"),
    "jpeg-ls": ("MONOCHROME2", "RGB", "PALETTE COLOR"),
    "jpeg2000": ("MONOCHROME2", "RGB", "PALETTE COLOR"),
    "jpeg-baseline": ("MONOCHROME2", "RGB", "YBR_FULL_422"),
}
_SYNTAX_UIDS = {"rle": "1.2.840.10008.1.2.5", "jpeg-ls": "1.2.840.10008.1.2.4.80", "jpeg2000": "1.2.840.10008.1.2.4.90"}
JPEG_QUALITY = 95
MIN_SIDE = 16  # smallest frame side the sector geometry is drawn at


@dataclass
class PhantomCine:
    """`frames` uint8 `[T,H,W]`, ground-truth lesion `masks` bool `[T,H,W]`, `sector` bool `[H,W]`, `fps`."""

    frames: np.ndarray
    masks: np.ndarray
    sector: np.ndarray
    fps: float

    @property
    def timestamps(self) -> np.ndarray:
        return np.arange(len(self.frames), dtype=np.float64) / self.fps


@dataclass
class _Lesion:
    center_y: float
    center_x: float
    radius_y: float
    radius_x: float
    drift_y: float
    drift_x: float
    period: float
    phase: float
    contrast: float


class PhantomGenerator:
    """Frame-by-frame phantom (constant memory for long cines). `frame(t)` must be called with t = 0, 1, 2, …"""

    def __init__(self, height: int = 480, width: int = 640, seed: int = 0, lesions: int = 2,
                 half_angle_deg: float = 38.0):
        if height < MIN_SIDE or width < MIN_SIDE:
            raise InputError(f"phantom frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width}")
        if lesions < 0:
            raise InputError(f"lesions must be >= 0, got {lesions}")
        self.height, self.width = height, width
        self.rng = np.random.default_rng(seed)
        rows = np.arange(height, dtype=np.float32)[:, None]
        cols = np.arange(width, dtype=np.float32)[None, :]
        # Apex a little above the image, centred; depth 0..1 spans the sector from the skin line to the bottom.
        apex_y, apex_x = -0.08 * height, (width - 1) / 2.0
        radius = np.hypot(rows - apex_y, cols - apex_x)
        self.angle = np.arctan2(cols - apex_x, rows - apex_y).astype(np.float32)
        near, far = 0.1 * height - apex_y, height - 1 - apex_y
        self.depth = ((radius - near) / (far - near)).astype(np.float32)
        self.half_angle = math.radians(half_angle_deg)
        self.sector = (np.abs(self.angle) <= self.half_angle) & (self.depth >= 0.0) & (self.depth <= 1.0)
        # Normalized Cartesian coordinates (unit = image height) for lesion ellipses.
        self.ny = rows / height
        self.nx = (cols - apex_x) / height
        depth = np.clip(self.depth, 0.0, 1.0)
        # Attenuation only partly compensated by the time-gain control: brighter near field, darker far field.
        self.gain = (1.25 - 0.65 * depth) * (1.0 + 0.1 * np.cos(3.0 * np.pi * depth))
        self.tissue = (1.0 + 0.35 * self.rng.standard_normal((1, 1)).astype(np.float32)
                       * np.sin(7.0 * depth + 3.0 * self.angle) ** 2).astype(np.float32)
        self.lesions = [self._random_lesion() for _ in range(lesions)]
        self.reflector_depth = float(self.rng.uniform(0.15, 0.3))
        self.reflector_angle = float(self.rng.uniform(-0.5, 0.5) * self.half_angle)
        self.reflector_width = float(self.rng.uniform(0.06, 0.1))
        self.speckle = self._complex_noise()

    def _random_lesion(self) -> _Lesion:
        rng = self.rng
        return _Lesion(center_y=rng.uniform(0.45, 0.8), center_x=rng.uniform(-0.3, 0.3),
                       radius_y=rng.uniform(0.05, 0.1), radius_x=rng.uniform(0.06, 0.13),
                       drift_y=rng.uniform(0.01, 0.03), drift_x=rng.uniform(0.02, 0.05),
                       period=rng.uniform(40.0, 90.0), phase=rng.uniform(0.0, 2 * np.pi),
                       contrast=rng.uniform(0.12, 0.3))

    def _complex_noise(self) -> np.ndarray:
        shape = (self.height, self.width)
        scale = np.float32(math.sqrt(0.5))
        return (self.rng.standard_normal(shape, dtype=np.float32)
                + 1j * self.rng.standard_normal(shape, dtype=np.float32)).astype(np.complex64) * scale

    def lesion_masks(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """`(mask bool [H,W], softened echogenicity factor [H,W])` of the lesions at frame `t`."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        factor = np.ones((self.height, self.width), dtype=np.float32)
        for lesion in self.lesions:
            phase = 2 * np.pi * t / lesion.period + lesion.phase
            cy = lesion.center_y + lesion.drift_y * math.sin(phase)
            cx = lesion.center_x + lesion.drift_x * math.sin(0.7 * phase + 1.0)
            ry = lesion.radius_y * (1.0 + 0.15 * math.sin(1.3 * phase))
            rx = lesion.radius_x * (1.0 + 0.15 * math.cos(1.1 * phase))
            tilt = 0.3 * math.sin(0.5 * phase)
            dy, dx = self.ny - cy, self.nx - cx
            u = (dy * math.cos(tilt) - dx * math.sin(tilt)) / ry
            v = (dy * math.sin(tilt) + dx * math.cos(tilt)) / rx
            # A lobed boundary so the shape deforms, not only scales.
            lobes = 1.0 + 0.08 * np.sin(3.0 * np.arctan2(u, v) + phase)
            level = np.sqrt(u * u + v * v) / lobes
            inside = level <= 1.0
            mask |= inside
            edge = np.clip((level - 0.9) / 0.2, 0.0, 1.0)  # a soft rim: no lesion has a pixel-sharp wall
            factor *= lesion.contrast + (1.0 - lesion.contrast) * edge
        return mask & self.sector, factor

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """`(frame uint8 [H,W], lesion mask bool [H,W])` at time step `t`."""
        mask, lesion_factor = self.lesion_masks(t)
        rho = np.float32(SPECKLE_CORRELATION)
        if t > 0:
            self.speckle = rho * self.speckle + np.float32(math.sqrt(1.0 - rho * rho)) * self._complex_noise()
        speckle = np.abs(self.speckle)

        wobble = 0.01 * math.sin(2 * np.pi * t / 50.0)
        ref_depth, ref_angle = self.reflector_depth + wobble, self.reflector_angle + wobble
        across = np.abs(self.angle - ref_angle)
        beam = across < self.reflector_width
        reflector = beam & (np.abs(self.depth - ref_depth) < 0.012)
        shadow = np.where(beam & (self.depth > ref_depth + 0.012), 0.15, 1.0).astype(np.float32)
        # Reverberation: echoes bouncing between probe and reflector appear at multiples of its depth, fading.
        near = self.depth + 0.1  # distance from the skin line (depth 0 is 10% below the probe face)
        ring = (near / (ref_depth + 0.1)) % 1.0
        order = np.floor(near / (ref_depth + 0.1))
        reverb = 1.0 + np.where(beam & (order >= 2) & ((ring < 0.04) | (ring > 0.96)), 1.5 * 0.5 ** order, 0.0)
        # Faint periodic bands across all beams in the near field (probe-skin reverberation).
        bands = 1.0 + 1.2 * (np.cos(2 * np.pi * self.depth / 0.07) > 0.8) * np.exp(-8.0 * np.clip(self.depth, 0, 1))

        amplitude = self.tissue * lesion_factor * shadow * reverb * bands * self.gain * speckle
        amplitude = np.where(reflector, 6.0 * self.gain * (0.5 + speckle), amplitude)
        decibels = 20.0 * np.log10(np.maximum(amplitude, 1e-6))
        image = 255.0 * (decibels + DISPLAY_OFFSET_DB) / DYNAMIC_RANGE_DB
        image = np.where(self.sector, np.clip(image, 0.0, 255.0), 0.0)
        return np.rint(image).astype(np.uint8), mask


def phantom_cine(frames: int = 60, height: int = 480, width: int = 640, fps: float = 30.0, seed: int = 0,
                 lesions: int = 2) -> PhantomCine:
    """A deterministic phantom cine loop of `frames` frames (same seed → same pixels)."""
    if frames < 1:
        raise InputError(f"a cine needs at least one frame, got frames={frames}")
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
    generator = PhantomGenerator(height, width, seed=seed, lesions=lesions)
    images = np.empty((frames, height, width), dtype=np.uint8)
    masks = np.empty((frames, height, width), dtype=bool)
    for t in range(frames):
        images[t], masks[t] = generator.frame(t)
    return PhantomCine(images, masks, generator.sector.copy(), float(fps))


def write_video(path, frames: np.ndarray, fps: float = 30.0, lossless: bool = False, crf: int = 18) -> None:
    """uint8 `[T,H,W]` (gray) or `[T,H,W,3]` (RGB) → a video file chosen by extension.

    `.mp4`: H.264 (full-range YUV so gray levels survive; `lossless` → crf 0, exact for gray frames);
    `.mkv`/`.avi`: FFV1, lossless.
    """
    import av

    from .fileio import atomic_write

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[3] == 3)):
        raise InputError(f"write_video expects uint8 [T,H,W] or [T,H,W,3], got {frames.dtype} {frames.shape}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".mkv", ".avi"):
        raise InputError(f"{path}: unsupported video extension {suffix!r}; use .mp4, .mkv or .avi")
    gray = frames.ndim == 3
    height, width = frames.shape[1:3]

    def write(tmp: Path) -> None:
        container = av.open(str(tmp), mode="w", format={".mp4": "mp4", ".mkv": "matroska", ".avi": "avi"}[suffix],
                            options={"movflags": "+faststart"} if suffix == ".mp4" else {})
        try:
            if suffix == ".mp4":
                stream = container.add_stream("libx264", rate=_frame_rate(fps))
                # Full-range YUV keeps all 256 gray levels; 4:2:0 needs even sizes, odd ones use 4:4:4.
                stream.pix_fmt = "yuvj420p" if not (height % 2 or width % 2) else "yuvj444p"
                stream.options = {"crf": "0" if lossless else str(crf), "preset": "veryfast"}
                stream.width, stream.height = width, height
            else:
                stream = container.add_stream("ffv1", rate=_frame_rate(fps))
                stream.pix_fmt = "gray" if gray else "bgr0"
                stream.width, stream.height = width, height
            for frame in frames:
                image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray" if gray else "rgb24")
                for packet in stream.encode(image):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()

    atomic_write(path, write)


def _frame_rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def write_dicom(path, frames: np.ndarray, fps: float = 30.0, photometric: str = "MONOCHROME2",
                transfer_syntax: str = "explicit-little", scan_region: tuple[int, int, int, int] | None = None,
                palette_bits: int = 16, jpeg_quality: int = JPEG_QUALITY) -> None:
    """uint8 frames → Ultrasound Multi-frame Image Storage with timing tags and a Sequence of Ultrasound Regions.

    Gray `[T,H,W]` frames are stored as MONOCHROME2, replicated to RGB / YBR_FULL_422, or as the indices of a
    PALETTE COLOR lookup table (`phantom_palette(palette_bits)`); `[T,H,W,3]` frames are RGB or YBR_FULL_422.
    `transfer_syntax` (see `DICOM_SYNTAX_PHOTOMETRICS` for the valid pairs): explicit-little (uncompressed),
    rle (pydicom's encoder), jpeg-ls (pyjpegls, lossless), jpeg2000 (pylibjpeg-openjpeg, lossless; colour is
    stored as YBR_RCT, the reversible transform), jpeg-baseline (Pillow at `jpeg_quality`: lossy; RGB without colour
    transform, YBR_FULL_422 with 4:2:2 chroma). YBR_FULL_422 subsamples chroma horizontally (width must be even);
    gray content survives it exactly uncompressed. `scan_region` `(x0, y0, x1, y1)` (max inclusive) is the 2D
    tissue region written to the Sequence of Ultrasound Regions (default: the whole frame).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    from .fileio import atomic_write

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[3] == 3)):
        raise InputError(f"write_dicom expects uint8 [T,H,W] or [T,H,W,3], got {frames.dtype} {frames.shape}")
    if photometric not in DICOM_PHOTOMETRICS:
        raise InputError(f"photometric must be one of {DICOM_PHOTOMETRICS}, got {photometric!r}")
    if transfer_syntax not in DICOM_SYNTAX_PHOTOMETRICS:
        raise InputError(f"transfer_syntax must be one of {tuple(DICOM_SYNTAX_PHOTOMETRICS)}, got {transfer_syntax!r}")
    if photometric not in DICOM_SYNTAX_PHOTOMETRICS[transfer_syntax]:
        raise InputError(f"{photometric} cannot be stored as {transfer_syntax} in DICOM; {transfer_syntax} stores "
                         f"{', '.join(DICOM_SYNTAX_PHOTOMETRICS[transfer_syntax])}")
    if frames.ndim == 4 and photometric in ("MONOCHROME2", "PALETTE COLOR"):
        raise InputError(f"RGB frames cannot be stored as {photometric}; pass photometric='RGB' or 'YBR_FULL_422'")
    if palette_bits not in (8, 16):
        raise InputError(f"palette_bits must be 8 or 16, got {palette_bits}")
    count, height, width = frames.shape[:3]
    if photometric == "YBR_FULL_422" and width % 2:
        raise InputError(f"YBR_FULL_422 needs an even width, got {width}")
    x0, y0, x1, y1 = scan_region if scan_region is not None else (0, 0, width - 1, height - 1)
    if not (0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height):
        raise InputError(f"scan_region {scan_region} must lie inside the {height}x{width} frame (x0, y0, x1, y1)")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = "PHANTOM"
    # Type 2 attributes of the Patient/Study/Series/Instance modules: present, empty when unknown.
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID = "", "", ""
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "01" if transfer_syntax == "jpeg-baseline" else "00"
    ds.StudyDescription = "HT engine synthetic phantom cine"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Manufacturer = "HT engine phantom generator"
    ds.NumberOfFrames = count
    ds.FrameTime = f"{1000.0 / fps:.10g}"  # ms between frames
    ds.FrameIncrementPointer = 0x00181063  # frames advance by FrameTime
    ds.CineRate = max(1, round(fps))
    ds.RecommendedDisplayFrameRate = max(1, round(fps))
    ds.SequenceOfUltrasoundRegions = [_ultrasound_region(x0, y0, x1, y1)]
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if photometric in ("MONOCHROME2", "PALETTE COLOR"):
        ds.SamplesPerPixel = 1
        pixels = frames
    else:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        pixels = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3)
    ds.PhotometricInterpretation = photometric
    if photometric == "PALETTE COLOR":
        _set_palette(ds, palette_bits)
    if photometric == "YBR_FULL_422" and transfer_syntax == "explicit-little":
        data = _pack_ybr_full_422(pixels)
    else:
        data = np.ascontiguousarray(pixels).tobytes()
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")  # DICOM values have even length
    if transfer_syntax == "jpeg-baseline":
        _encode_jpeg_baseline(ds, pixels, photometric, jpeg_quality)
    elif transfer_syntax != "explicit-little":
        if transfer_syntax == "jpeg2000" and ds.SamplesPerPixel == 3:
            ds.PhotometricInterpretation = "YBR_RCT"  # the reversible colour transform, as lossless J2K colour is
        ds.compress(_SYNTAX_UIDS[transfer_syntax], np.ascontiguousarray(pixels))

    atomic_write(Path(path), lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def phantom_palette(bits: int = 16) -> np.ndarray:
    """The PALETTE COLOR table the phantom writes: a 256-entry heat map, `[256,3]` uint16 of `bits` bits."""
    index = np.arange(256, dtype=np.int64)
    rgb = np.stack([np.clip(3 * index, 0, 255), np.clip(3 * index - 255, 0, 255), np.clip(3 * index - 510, 0, 255)],
                   axis=1)
    return (rgb * 257 if bits == 16 else rgb).astype(np.uint16)


def _set_palette(ds, bits: int) -> None:
    # 16-bit entries; 8-bit ones are stored one per 16-bit word (PS3.3 C.7.6.3.1.6), their descriptor says 8.
    table = phantom_palette(bits)
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table[:, channel].astype("<u2").tobytes())


def _ultrasound_region(x0: int, y0: int, x1: int, y1: int):
    from pydicom.dataset import Dataset

    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.01
    region.ReferencePixelX0, region.ReferencePixelY0 = (x0 + x1) // 2, y0
    return region


def _encode_jpeg_baseline(ds, pixels: np.ndarray, photometric: str, quality: int) -> None:
    """Each frame a JPEG Baseline image (Pillow), encapsulated with a basic offset table."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    options = {"MONOCHROME2": {}, "RGB": {"keep_rgb": True, "subsampling": 0}, "YBR_FULL_422": {"subsampling": 1}}
    encoded = []
    for frame in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=quality,
                                                           **options[photometric])
        encoded.append(buffer.getvalue())
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _pack_ybr_full_422(rgb: np.ndarray) -> bytes:
    """RGB `[T,H,W,3]` → YBR_FULL_422 bytes: Y1 Y2 Cb Cr per horizontal pixel pair (PS3.5 §8.2.1)."""
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(rgb.reshape(-1, rgb.shape[2], 3), "RGB", "YBR_FULL").reshape(rgb.shape)
    y = ybr[..., 0]
    chroma = ybr[..., 1:].astype(np.uint16)
    chroma = ((chroma[:, :, 0::2] + chroma[:, :, 1::2] + 1) // 2).astype(np.uint8)  # average each pixel pair
    packed = np.empty(rgb.shape[:2] + (rgb.shape[2] // 2, 4), dtype=np.uint8)
    packed[..., 0], packed[..., 1] = y[:, :, 0::2], y[:, :, 1::2]
    packed[..., 2], packed[..., 3] = chroma[..., 0], chroma[..., 1]
    return packed.tobytes()
