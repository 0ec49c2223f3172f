"""Every source kind round-trips phantom frames (exactly, or within a lossy codec's error) with timestamps, and
fails with a `SourceError` naming the file and the frame."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("pydicom")

from engine.errors import SourceError  # noqa: E402
from engine.phantom import phantom_cine, write_dicom, write_video  # noqa: E402
from engine.stream import (  # noqa: E402
    ArraySource,
    CaptureSource,
    DicomSource,
    FolderSource,
    LiveSource,
    VideoSource,
    dicom_support,
    open_source,
)

FPS = 25.0


@pytest.fixture(scope="module")
def cine():
    # Odd height, non-square: exercises the writers' padding and every reader's shape handling.
    return phantom_cine(12, 57, 80, fps=FPS, seed=3)


def read_all(source):
    frames = list(source)
    return [f.index for f in frames], np.array([f.timestamp for f in frames]), [f.pixels for f in frames]


def gray_of(pixels):
    if pixels.ndim == 3:
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        return pixels[..., 0]
    return pixels


def test_array_source_round_trip_and_timestamps(cine):
    indices, stamps, pixels = read_all(open_source(cine.frames, fps=FPS))
    assert indices == list(range(len(cine.frames)))
    np.testing.assert_allclose(stamps, np.arange(len(cine.frames)) / FPS)
    np.testing.assert_array_equal(np.stack(pixels), cine.frames)
    rgb = np.repeat(cine.frames[..., None], 3, axis=3)
    np.testing.assert_array_equal(np.stack(read_all(ArraySource(rgb))[2]), rgb)


def test_folder_source_natural_order(tmp_path, cine):
    from engine.images import write_png

    for index, frame in enumerate(cine.frames):
        write_png(tmp_path / f"frame{index}.png", frame)  # frame10 must come after frame9, not after frame1
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(tmp_path, fps=10.0)
    assert isinstance(source, FolderSource)
    indices, stamps, pixels = read_all(source)
    np.testing.assert_array_equal(np.stack(pixels), cine.frames)
    np.testing.assert_allclose(stamps, np.arange(len(cine.frames)) / 10.0)


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_lossless_video_round_trip_is_exact(tmp_path, cine, suffix):
    path = tmp_path / f"cine{suffix}"
    write_video(path, cine.frames, fps=FPS)
    indices, stamps, pixels = read_all(open_source(path))
    assert indices == list(range(len(cine.frames)))
    np.testing.assert_array_equal(np.stack([gray_of(p) for p in pixels]), cine.frames)
    np.testing.assert_allclose(stamps, np.arange(len(cine.frames)) / FPS, atol=1e-3)


def test_mp4_lossless_exact_and_lossy_within_codec_error(tmp_path, cine):
    exact = tmp_path / "exact.mp4"
    write_video(exact, cine.frames, fps=FPS, lossless=True)
    _, stamps, pixels = read_all(open_source(exact))
    np.testing.assert_array_equal(np.stack([gray_of(p) for p in pixels]), cine.frames)
    np.testing.assert_allclose(stamps, np.arange(len(cine.frames)) / FPS, atol=1e-3)

    lossy = tmp_path / "lossy.mp4"
    write_video(lossy, cine.frames, fps=FPS, crf=18)
    _, _, pixels = read_all(VideoSource(lossy, gray=True))
    decoded = np.stack(pixels).astype(np.float64)
    assert decoded.shape == cine.frames.shape
    mse = np.mean((decoded - cine.frames) ** 2)
    psnr = 10 * np.log10(255.0 ** 2 / mse)
    assert 30.0 < psnr < 99.0, f"H.264 crf 18 should be lossy but close: PSNR {psnr:.1f} dB"


@pytest.mark.parametrize("photometric,syntax", [("MONOCHROME2", "explicit-little"), ("MONOCHROME2", "rle"),
                                                ("RGB", "explicit-little"), ("RGB", "rle"),
                                                ("YBR_FULL_422", "explicit-little")])
def test_dicom_round_trip(tmp_path, photometric, syntax):
    cine = phantom_cine(5, 41, 62, fps=FPS, seed=5)  # YBR_FULL_422 needs an even width
    path = tmp_path / "cine.dcm"
    write_dicom(path, cine.frames, fps=FPS, photometric=photometric, transfer_syntax=syntax)
    source = open_source(path)
    assert isinstance(source, DicomSource) and len(source) == 5
    indices, stamps, pixels = read_all(source)
    assert indices == list(range(5))
    np.testing.assert_allclose(stamps, np.arange(5) / FPS, atol=1e-6)
    expected = cine.frames if photometric == "MONOCHROME2" else np.repeat(cine.frames[..., None], 3, axis=3)
    np.testing.assert_array_equal(np.stack(pixels), expected)


def test_dicom_file_is_valid_ultrasound_multiframe(tmp_path, cine):
    import pydicom

    path = tmp_path / "cine.dcm"
    write_dicom(path, cine.frames, fps=FPS)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "US" and int(ds.NumberOfFrames) == len(cine.frames)
    assert float(ds.FrameTime) == pytest.approx(1000.0 / FPS)
    assert ds.FrameIncrementPointer == 0x00181063
    np.testing.assert_array_equal(ds.pixel_array, cine.frames)


def test_dicom_frame_time_vector_and_rgb_color(tmp_path):
    import pydicom

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(3, 20, 30, 3), dtype=np.uint8)
    path = tmp_path / "colour.dcm"
    write_dicom(path, colour, fps=FPS, photometric="RGB")
    ds = pydicom.dcmread(path)
    ds.FrameTimeVector = [0, 40, 60]  # ms before each frame
    ds.FrameIncrementPointer = 0x00181065  # frames advance by FrameTimeVector, not FrameTime
    ds.save_as(path)
    _, stamps, pixels = read_all(DicomSource(path))
    np.testing.assert_allclose(stamps, [0.0, 0.04, 0.1])
    np.testing.assert_array_equal(np.stack(pixels), colour)


def test_dicom_support_names_installed_decoders():
    support = dicom_support()
    assert support["1.2.840.10008.1.2.1"][1]
    assert support["1.2.840.10008.1.2.5"][1]  # RLE Lossless: pydicom's own decoder


def test_live_callable_and_iterable_sources(cine):
    frames = iter(cine.frames)
    source = open_source(lambda: next(frames, None))
    assert isinstance(source, LiveSource)
    indices, stamps, pixels = read_all(source)
    np.testing.assert_array_equal(np.stack(pixels), cine.frames)
    assert indices == list(range(len(cine.frames))) and (np.diff(stamps) >= 0).all() and stamps[0] == 0.0

    pairs = [(0.5 + i * 0.1, frame) for i, frame in enumerate(cine.frames[:3])]
    _, stamps, _ = read_all(open_source(iter(pairs)))
    np.testing.assert_allclose(stamps, [0.5, 0.6, 0.7])


def test_realtime_replay_follows_the_source_clock(cine):
    import time

    start = time.monotonic()
    list(ArraySource(cine.frames[:6], fps=50.0, realtime=True))
    assert time.monotonic() - start >= 5 / 50.0 * 0.95


# --- failures name the file and the frame ---------------------------------------------------------------------

def test_live_source_raising_at_frame_k():
    def frames():
        for index in range(10):
            if index == 4:
                raise RuntimeError("capture card lost sync")
            yield np.full((8, 8), index, dtype=np.uint8)

    seen = []
    with pytest.raises(SourceError, match="frame 4.*capture card lost sync") as info:
        for frame in open_source(frames()):
            seen.append(frame.index)
    assert seen == [0, 1, 2, 3] and info.value.frame == 4


def test_bad_frame_from_live_source_is_named():
    with pytest.raises(SourceError, match="frame 1"):
        list(open_source(iter([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32)])))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_truncated_video(tmp_path, cine, suffix):
    path = tmp_path / f"cine{suffix}"
    write_video(path, cine.frames, fps=FPS, lossless=True)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    seen = []
    with pytest.raises(SourceError) as info:
        for frame in open_source(path):
            seen.append(frame.index)
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    assert info.value.frame == len(seen) and 0 < len(seen) < len(cine.frames)


def test_unreadable_video_names_file_and_frame(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(SourceError, match=r"broken\.mp4, frame 0"):
        list(open_source(path))


def test_dicom_without_pixel_data(tmp_path, cine):
    import pydicom

    path = tmp_path / "nopixels.dcm"
    write_dicom(path, cine.frames[:2], fps=FPS)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(SourceError, match=r"nopixels\.dcm, frame 0: .*PixelData"):
        list(open_source(path))


def test_truncated_dicom_names_the_frame(tmp_path, cine):
    import pydicom

    path = tmp_path / "short.dcm"
    write_dicom(path, cine.frames[:5], fps=FPS)
    ds = pydicom.dcmread(path)
    frame_bytes = cine.frames[0].size
    ds.PixelData = ds.PixelData[:2 * frame_bytes + 100]  # two whole frames, then part of the third
    ds.save_as(path)
    seen = []
    with pytest.raises(SourceError, match=r"short\.dcm, frame 2") as info:
        for frame in open_source(path):
            seen.append(frame.index)
    assert seen == [0, 1] and info.value.frame == 2


def test_missing_paths_and_unknown_inputs(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "absent.mp4")
    with pytest.raises(SourceError, match="no image files"):
        open_source(tmp_path)
    with pytest.raises(SourceError, match="cannot stream from a int"):
        open_source(42)
    with pytest.raises(SourceError, match=r"\[T,H,W\]"):
        open_source(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("colour", [False, True])
def test_dicom_jpeg_baseline_within_codec_error(tmp_path, cine, colour):
    """Scanners often export JPEG Baseline cines (colour as YBR_FULL_422); decoded here by pydicom's Pillow plugin."""
    import io

    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    if not dicom_support()[JPEGBaseline8Bit][1]:
        pytest.skip("no JPEG Baseline decoder installed for pydicom")
    frames = np.repeat(cine.frames[..., None], 3, axis=3) if colour else cine.frames
    path = tmp_path / "plain.dcm"
    write_dicom(path, frames, fps=FPS, photometric="RGB" if colour else "MONOCHROME2")
    ds = pydicom.dcmread(path)
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95, subsampling=1 if colour else 0)
        encoded.append(buffer.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if colour:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.save_as(path, enforce_file_format=True)
    _, stamps, pixels = read_all(open_source(path))
    decoded = np.stack(pixels).astype(np.float64)
    assert decoded.shape == frames.shape
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((decoded - frames) ** 2))
    assert 30.0 < psnr < 99.0, f"JPEG quality 95 should be lossy but close: PSNR {psnr:.1f} dB"
    np.testing.assert_allclose(stamps, np.arange(len(frames)) / FPS, atol=1e-6)


def test_stream_modules_import_no_torch():
    """Streaming must work with the torch-free runtimes (ONNX/TensorRT artifacts)."""
    import subprocess
    import sys

    code = "import sys, engine.stream, engine.phantom; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("declared", [3, 8])
def test_dicom_number_of_frames_mismatch_is_reported(tmp_path, cine, declared):
    import pydicom

    path = tmp_path / "mismatch.dcm"
    write_dicom(path, cine.frames[:5], fps=FPS)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = declared
    ds.save_as(path)
    seen = []
    with pytest.raises(SourceError, match=rf"mismatch\.dcm.*NumberOfFrames is {declared} but the pixel data holds 5 "
                                          rf"frames"):
        for frame in open_source(path):
            seen.append(frame.index)
    assert seen == ([] if declared < 5 else [0, 1, 2, 3, 4])


def test_dicom_header_claiming_huge_frames_is_refused_before_decoding(tmp_path, cine):
    import pydicom

    path = tmp_path / "bomb.dcm"
    write_dicom(path, cine.frames[:2], fps=FPS)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 65535, 65535  # a decoder would allocate 4 GiB per frame
    ds.save_as(path)
    with pytest.raises(SourceError, match=r"bomb\.dcm: frames of 65535x65535x1 pixels; expected 1 to \d+ pixels"):
        open_source(path)


def test_video_with_an_unknown_codec_is_a_source_error(tmp_path, cine):
    path = tmp_path / "unknown.mkv"
    write_video(path, cine.frames[:3], fps=FPS)
    path.write_bytes(path.read_bytes().replace(b"V_FFV1", b"V_QQQQ"))  # a codec id FFmpeg has no decoder for
    with pytest.raises(SourceError, match=r"unknown\.mkv, frame 0: "):
        list(open_source(path))


# FFmpeg's virtual test-pattern device, read through PyAV exactly as a capture card is (the stand-in for one here).
TESTSRC = "testsrc=size=96x64:rate=30:duration=0.4"


def _pyav_frames(spec: str, pixel_format: str, options=None) -> list:
    import av

    with av.open(spec, format="lavfi", options=options or {}) as container:
        return [frame.to_ndarray(format=pixel_format) for frame in container.decode(video=0)]


def test_capture_source_reads_a_virtual_device_through_pyav():
    source = open_source(TESTSRC, input_format="lavfi")
    assert isinstance(source, CaptureSource) and source.name == f"lavfi:{TESTSRC}" and not source.has_clock
    indices, stamps, pixels = read_all(source)
    expected = _pyav_frames(TESTSRC, "rgb24")
    assert indices == list(range(12)) and len(expected) == 12
    np.testing.assert_allclose(stamps, np.arange(12) / 30, rtol=0, atol=1e-9)  # the device's presentation times
    for got, want in zip(pixels, expected):
        assert got.shape == (64, 96, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    assert len({frame.tobytes() for frame in pixels}) == 12  # a moving pattern: every frame differs


def test_capture_source_passes_the_input_format_options():
    graph = "testsrc=size=50x34:rate=10:duration=0.5,format=gray"
    source = CaptureSource("ignored", "lavfi", {"graph": graph})  # lavfi's `graph` option replaces the URL
    frames = [frame.pixels for frame in source]
    expected = _pyav_frames("ignored", "gray", {"graph": graph})
    assert len(frames) == 5 and frames[0].shape == (34, 50)  # a gray pixel format decodes to HxW
    for got, want in zip(frames, expected):
        np.testing.assert_array_equal(got, want)


def test_capture_source_errors_name_the_device():
    with pytest.raises(SourceError, match="'v4l2' input cannot open '/dev/video99'.*video_size"):
        list(CaptureSource("/dev/video99", "v4l2", {"video_size": "640x480"}))
    with pytest.raises(SourceError, match="opens a device or stream named by a string"):
        open_source(np.zeros((2, 4, 4), np.uint8), input_format="lavfi")
    with pytest.raises(SourceError, match="need an input format"):
        open_source(TESTSRC, input_options={"framerate": "30"})
    with pytest.raises(SourceError, match="needs FFmpeg's input format"):
        CaptureSource("/dev/video0", "")
