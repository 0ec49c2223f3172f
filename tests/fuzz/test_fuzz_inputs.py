"""Fuzzing of the input readers: image files (PNG), DICOM cines and video files, header and data bytes mutated.
Only typed engine errors may come out (see harness.py); a frame that decodes is fine too."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from engine.images import read_image

from .harness import mutated_bytes, only_typed_errors

av = pytest.importorskip("av")
pydicom = pytest.importorskip("pydicom")

from engine.phantom import phantom_cine, write_dicom, write_video  # noqa: E402
from engine.stream import open_source  # noqa: E402

FRAMES = phantom_cine(4, 32, 48, fps=10.0, seed=5).frames


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-inputs")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(FRAMES[0]).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@given(data=mutated_bytes(PNG, (0, 64)) | mutated_bytes(PNG))
def test_png_reader(scratch, data):
    path = scratch / "image.png"
    path.write_bytes(data)
    only_typed_errors(lambda: read_image(path), data)


def _file_bytes(write, name: str) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        write(path)
        return path.read_bytes()


DICOM = _file_bytes(lambda path: write_dicom(path, FRAMES, fps=10.0), "cine.dcm")
DICOM_HEADER_END = DICOM.index(b"\xe0\x7f\x10\x00")  # the PixelData tag: everything before it is header
MKV = _file_bytes(lambda path: write_video(path, FRAMES, fps=10.0), "cine.mkv")


def _stream_all(path) -> None:
    for _ in open_source(path):
        pass


@given(data=mutated_bytes(DICOM, (128, DICOM_HEADER_END)) | mutated_bytes(DICOM))
def test_dicom_source(scratch, data):
    path = scratch / "cine.dcm"
    path.write_bytes(data)
    only_typed_errors(lambda: _stream_all(path), data)


@given(tag=st.sampled_from(["NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel",
                            "PixelRepresentation", "FrameTime", "CineRate"]),
       value=st.integers(-2**31, 2**31) | st.sampled_from([0, 1, 3, 7, 8, 16, 32, 64, 10**6]))
def test_dicom_header_values(scratch, tag, value):
    path = scratch / "values.dcm"
    path.write_bytes(DICOM)
    dataset = pydicom.dcmread(path)
    try:
        setattr(dataset, tag, value)
        dataset.save_as(path)
    except (ValueError, OverflowError, TypeError, KeyError, OSError):  # pydicom refuses to write the value
        return
    only_typed_errors(lambda: _stream_all(path), (tag, value))


@given(data=mutated_bytes(MKV, (0, 256)) | mutated_bytes(MKV))
def test_video_source(scratch, data):
    path = scratch / "cine.mkv"
    path.write_bytes(data)
    only_typed_errors(lambda: _stream_all(path), data)


def test_base_inputs_are_valid(scratch):
    """The targets start from files the readers accept, so mutations explore near-valid inputs."""
    for name, data in (("base.png", PNG), ("base.dcm", DICOM), ("base.mkv", MKV)):
        (scratch / name).write_bytes(data)
    assert read_image(scratch / "base.png").shape == FRAMES[0].shape
    assert len(list(open_source(scratch / "base.dcm"))) == len(list(open_source(scratch / "base.mkv"))) == len(FRAMES)
