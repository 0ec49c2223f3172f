"""Every photometric interpretation × transfer syntax the DICOM source reads, on files written here (the phantom
writer, pydicom's encoders, Pillow for JPEG) and on pydicom's bundled test files: decoded pixels equal what was
written (lossless) or stay within the codec's loss (lossy: the bound is stated at each test); 16-bit scaling, big
endian, deflate, timing tags, Enhanced US per-frame timing, and unsupported attributes refused by name."""

from __future__ import annotations

import io

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pylibjpeg")
pytest.importorskip("jpeg_ls")

from engine.errors import SourceError  # noqa: E402
from engine.phantom import DICOM_SYNTAX_PHOTOMETRICS, phantom_cine, phantom_palette, write_dicom  # noqa: E402
from engine.stream import DicomSource  # noqa: E402

FPS = 20.0
LOSSLESS = ("explicit-little", "rle", "jpeg-ls", "jpeg2000")
# JPEG Baseline at quality 95 (the writer's default) on speckle: measured max 7-8, PSNR 44.5 dB on these frames.
JPEG_Q95_MAX_ERROR, JPEG_Q95_PSNR_DB = 10, 42.0


@pytest.fixture(scope="module")
def gray():
    return phantom_cine(3, 57, 80, fps=FPS, seed=3).frames  # odd height, non-square


@pytest.fixture(scope="module")
def colour(gray):
    # The same speckle in every channel under a smooth tint: real colour whose chroma varies slowly, as colour
    # overlays and tinted B-mode do, so 4:2:x chroma subsampling keeps it (speckled chroma would not survive it).
    columns = np.linspace(0.0, 1.0, gray.shape[2])[None, None, :]
    rows = np.linspace(0.0, 1.0, gray.shape[1])[None, :, None]
    channels = [0.75 * gray + 60 * columns, 0.75 * gray + 40 * rows, 0.75 * gray + 50 * (1 - columns)]
    return np.ascontiguousarray(np.clip(np.rint(np.stack(channels, axis=3)), 0, 255).astype(np.uint8))


def decoded(path, **options):
    return np.stack([frame.pixels for frame in DicomSource(path, **options)])


def psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def rewrite(path, frames, photometric="RGB"):
    """A phantom file to edit: returns its dataset (pixel data still uncompressed)."""
    write_dicom(path, frames, fps=FPS, photometric=photometric)
    return pydicom.dcmread(path)


COMBINATIONS = [(syntax, photometric, content) for syntax, photometrics in DICOM_SYNTAX_PHOTOMETRICS.items()
                for photometric in photometrics
                for content in (("gray",) if photometric in ("MONOCHROME2", "PALETTE COLOR") or
                                (photometric, syntax) == ("YBR_FULL_422", "explicit-little") else ("gray", "colour"))]


@pytest.mark.parametrize("syntax,photometric,content", COMBINATIONS)
def test_every_written_combination_decodes(tmp_path, gray, colour, syntax, photometric, content):
    frames = colour if content == "colour" else gray
    path = tmp_path / "cine.dcm"
    write_dicom(path, frames, fps=FPS, photometric=photometric, transfer_syntax=syntax)
    if photometric == "MONOCHROME2":
        expected = gray
    elif photometric == "PALETTE COLOR":
        expected = (phantom_palette(16)[gray] >> 8).astype(np.uint8)
    else:
        expected = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3)
    source = DicomSource(path)
    stored = source.dataset.PhotometricInterpretation
    assert stored == ("YBR_RCT" if (syntax, photometric) == ("jpeg2000", "RGB") else photometric)
    pixels = decoded(path)
    np.testing.assert_allclose([f.timestamp for f in DicomSource(path)], np.arange(3) / FPS, atol=1e-9)
    if syntax in LOSSLESS:
        np.testing.assert_array_equal(pixels, expected)
    else:
        assert pixels.shape == expected.shape
        assert np.abs(pixels.astype(int) - expected).max() <= JPEG_Q95_MAX_ERROR
        assert psnr(pixels, expected) >= JPEG_Q95_PSNR_DB


def test_invalid_combinations_are_refused(tmp_path, gray):
    from engine.errors import InputError

    with pytest.raises(InputError, match="PALETTE COLOR cannot be stored as jpeg-baseline"):
        write_dicom(tmp_path / "x.dcm", gray, photometric="PALETTE COLOR", transfer_syntax="jpeg-baseline")
    with pytest.raises(InputError, match="YBR_FULL_422 cannot be stored as rle"):
        write_dicom(tmp_path / "x.dcm", gray, photometric="YBR_FULL_422", transfer_syntax="rle")


def test_jpeg_ls_near_lossless_stays_within_its_near_bound(tmp_path, gray, colour):
    from pydicom.uid import JPEGLSNearLossless

    for frames, photometric in ((gray, "MONOCHROME2"), (colour, "RGB")):
        ds = rewrite(tmp_path / "n.dcm", frames, photometric)
        ds.compress(JPEGLSNearLossless, frames, jls_error=2)
        ds.save_as(tmp_path / "n.dcm")
        error = np.abs(decoded(tmp_path / "n.dcm").astype(int) - frames)
        assert error.max() <= 2 and error.max() > 0  # NEAR=2 is the codec's guarantee per sample


def test_jpeg2000_lossy_ybr_ict(tmp_path, colour):
    from pydicom.uid import JPEG2000

    ds = rewrite(tmp_path / "i.dcm", colour)
    ds.PhotometricInterpretation = "YBR_ICT"  # the irreversible colour transform of lossy JPEG 2000
    ds.compress(JPEG2000, colour, j2k_psnr=[50])
    ds.save_as(tmp_path / "i.dcm")
    pixels = decoded(tmp_path / "i.dcm")
    assert pydicom.dcmread(tmp_path / "i.dcm").PhotometricInterpretation == "YBR_ICT"
    # The encoder targets 50 dB per component; the colour transform's rounding costs under 3 dB of that here.
    assert 47.0 <= psnr(pixels, colour) < 99.0


def jpeg_file(path, frames, label, syntax, components=None, subsampling=0):
    """Pillow-encoded JPEG frames (quality 95) under `syntax` and PhotometricInterpretation `label`.

    `components`: frames given as YCbCr samples to store as they are (Pillow's YCbCr mode: no colour transform)."""
    from PIL import Image
    from pydicom.encaps import encapsulate

    ds = rewrite(path, frames)
    encoded = []
    for frame in frames if components is None else components:
        buffer = io.BytesIO()
        image = Image.fromarray(frame, mode="YCbCr") if components is not None else Image.fromarray(frame)
        image.save(buffer, format="JPEG", quality=95, subsampling=subsampling)
        encoded.append(buffer.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PhotometricInterpretation = label
    ds.save_as(path)
    return path


@pytest.mark.parametrize("label,syntax,subsampling", [("YBR_FULL", "1.2.840.10008.1.2.4.50", 0),
                                                      ("YBR_FULL_422", "1.2.840.10008.1.2.4.50", 1),
                                                      ("YBR_FULL_422", "1.2.840.10008.1.2.4.51", 1)])
def test_jpeg_ybr_full_and_extended(tmp_path, colour, label, syntax, subsampling):
    """JFIF YCbCr (full range) at 4:4:4 or 4:2:2, as JPEG Baseline or (8-bit) JPEG Extended: within the q95 bound."""
    pixels = decoded(jpeg_file(tmp_path / "j.dcm", colour, label, syntax, subsampling=subsampling))
    assert np.abs(pixels.astype(int) - colour).max() <= JPEG_Q95_MAX_ERROR
    assert psnr(pixels, colour) >= JPEG_Q95_PSNR_DB


def test_jpeg_ybr_partial_420(tmp_path, colour):
    """Partial-range YCbCr (PS3.3 C.7.6.3.1.2) with 4:2:0 chroma: its own inverse transform, then RGB."""
    matrix = np.array([[0.2568, 0.5041, 0.0979], [-0.1482, -0.2910, 0.4392], [0.4392, -0.3678, -0.0714]])
    components = np.clip(np.rint(colour @ matrix.T + [16, 128, 128]), 0, 255).astype(np.uint8)
    path = jpeg_file(tmp_path / "p.dcm", colour, "YBR_PARTIAL_420", "1.2.840.10008.1.2.4.50", components, 2)
    pixels = decoded(path)
    # Partial range scales JPEG's error up (x1.16 in Y, x1.6 in Cr) and 4:2:0 halves chroma both ways.
    assert np.abs(pixels.astype(int) - colour).max() <= 2 * JPEG_Q95_MAX_ERROR
    assert psnr(pixels, colour) >= JPEG_Q95_PSNR_DB - 4.0


def _palette_dataset(path, gray, descriptor, tables, segmented=False):
    ds = rewrite(path, gray, "PALETTE COLOR")
    for colour, table in zip(("Red", "Green", "Blue"), tables):
        ds[f"{colour}PaletteColorLookupTableDescriptor"].value = descriptor
        delattr(ds, f"{colour}PaletteColorLookupTableData")
        data = np.asarray(table, dtype="<u2").tobytes()
        setattr(ds, f"Segmented{colour}PaletteColorLookupTableData" if segmented else
                f"{colour}PaletteColorLookupTableData", data)
    ds.save_as(path)
    return path


def test_palette_8_bit_table_with_first_mapped_value(tmp_path, gray):
    # 200 entries starting at index 40: pixel values below map to the first entry, above to the last (PS3.3).
    entries = np.arange(200)
    tables = [entries % 256, (255 - entries) % 256, (entries * 3) % 256]
    path = _palette_dataset(tmp_path / "p8.dcm", gray, [200, 40, 8], tables)
    index = np.clip(gray.astype(int) - 40, 0, 199)
    expected = np.stack([np.asarray(t)[index] for t in tables], axis=3).astype(np.uint8)
    np.testing.assert_array_equal(decoded(path), expected)


def test_palette_16_bit_segmented_table(tmp_path, gray):
    # Segments (PS3.3 C.7.9.2): discrete [0, 2, v0, v1], then linear [1, 254, end] up to entry 255.
    ends = (65535, 32768, 0)
    tables = [[0, 2, 0, 257, 1, 254, end] for end in ends]
    path = _palette_dataset(tmp_path / "seg.dcm", gray, [256, 0, 16], tables, segmented=True)
    pixels = decoded(path)
    assert pixels.shape == gray.shape + (3,)
    red = pixels[..., 0][gray >= 1].astype(int)
    expected_red = np.rint(257 + (gray[gray >= 1].astype(float) - 1) * (65535 - 257) / 254).astype(int) >> 8
    assert np.abs(red - expected_red).max() <= 1  # the linear segment's rounding, then >> 8
    assert (pixels[..., 0][gray == 0] == 0).all()


def _sixteen_bit(path, values, photometric="MONOCHROME2", signed=False, big_endian=False, window=None):
    from pydicom.uid import ExplicitVRBigEndian

    ds = rewrite(path, np.zeros(values.shape, np.uint8), "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
    ds.PhotometricInterpretation = photometric
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = (">" if big_endian else "<") + ("i2" if signed else "u2")
    ds.PixelData = values.astype(dtype).tobytes()
    ds["PixelData"].VR = "OW"
    if big_endian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    else:
        ds.save_as(path)
    return path


@pytest.mark.parametrize("big_endian", [False, True])
def test_12_bit_data_scaled_by_its_stored_range(tmp_path, big_endian):
    values = np.random.default_rng(1).integers(0, 4096, size=(2, 23, 31))
    path = _sixteen_bit(tmp_path / "b.dcm", values, big_endian=big_endian)
    np.testing.assert_array_equal(decoded(path), (values >> 4).astype(np.uint8))
    signed = np.random.default_rng(2).integers(-2048, 2048, size=(2, 23, 31))
    path = _sixteen_bit(tmp_path / "s.dcm", signed, signed=True, big_endian=big_endian)
    np.testing.assert_array_equal(decoded(path), ((signed + 2048) >> 4).astype(np.uint8))


def test_12_bit_data_scaled_by_its_voi_window_and_monochrome1_inverted(tmp_path):
    values = np.random.default_rng(3).integers(0, 4096, size=(2, 23, 31))
    center, width = 1500.0, 1001.0
    linear = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255  # PS3.3 C.11.2.1.2.1
    expected = np.rint(np.clip(linear, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(decoded(_sixteen_bit(tmp_path / "w.dcm", values, window=(center, width))), expected)
    path = _sixteen_bit(tmp_path / "m1.dcm", values, photometric="MONOCHROME1", window=(center, width))
    np.testing.assert_array_equal(decoded(path), 255 - expected)


def test_deflated_explicit_vr(tmp_path, gray):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = rewrite(tmp_path / "d.dcm", gray, "MONOCHROME2")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "d.dcm")
    assert pydicom.dcmread(tmp_path / "d.dcm").file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(decoded(tmp_path / "d.dcm"), gray)


def test_frame_time_vector_and_increment_pointer(tmp_path, gray):
    ds = rewrite(tmp_path / "v.dcm", gray, "MONOCHROME2")
    ds.FrameTimeVector = [0, 33.5, 50]
    ds.FrameIncrementPointer = 0x00181065
    ds.save_as(tmp_path / "v.dcm")
    np.testing.assert_allclose([f.timestamp for f in DicomSource(tmp_path / "v.dcm")], [0.0, 0.0335, 0.0835])
    ds.FrameIncrementPointer = 0x00181063  # the pointer names FrameTime: a stray vector does not win
    ds.save_as(tmp_path / "v.dcm")
    np.testing.assert_allclose(DicomSource(tmp_path / "v.dcm").timestamps, np.arange(3) / FPS)
    ds.FrameIncrementPointer = 0x00181065
    ds.FrameTimeVector = [0, 10]
    ds.save_as(tmp_path / "v.dcm")
    with pytest.raises(SourceError, match="FrameIncrementPointer names FrameTimeVector, which holds 2 values for 3"):
        DicomSource(tmp_path / "v.dcm")


def test_enhanced_us_volume_per_frame_timing(tmp_path, gray):
    from pydicom.dataset import Dataset

    ds = rewrite(tmp_path / "e.dcm", gray, "MONOCHROME2")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.2"  # Enhanced US Volume
    for key in ("FrameTime", "FrameIncrementPointer", "CineRate", "RecommendedDisplayFrameRate"):
        delattr(ds, key)
    groups = []
    for stamp in ("20260102030405.000000", "20260102030405.040000", "20260102030405.125000"):
        content = Dataset()
        content.FrameReferenceDateTime = stamp
        group = Dataset()
        group.FrameContentSequence = [content]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.save_as(tmp_path / "e.dcm")
    source = DicomSource(tmp_path / "e.dcm")
    np.testing.assert_allclose([f.timestamp for f in source], [0.0, 0.04, 0.125])


@pytest.mark.parametrize("key,value,match", [
    ("PhotometricInterpretation", "YBR_PARTIAL_422", "PhotometricInterpretation YBR_PARTIAL_422 is not supported"),
    ("PhotometricInterpretation", "HSV", "PhotometricInterpretation HSV is not supported; expected one of "
                                         "MONOCHROME1, MONOCHROME2, RGB, PALETTE COLOR"),
    ("BitsAllocated", 32, "BitsAllocated 32 is not supported; expected 8 or 16"),
    ("TransferSyntaxUID", "1.2.840.10008.1.2.4.100", r"TransferSyntaxUID 1\.2\.840\.10008\.1\.2\.4\.100 is not "
                                                     "supported; expected one of"),
])
def test_unsupported_attributes_are_refused_by_name(tmp_path, gray, key, value, match):
    ds = rewrite(tmp_path / "u.dcm", gray, "MONOCHROME2")
    if key == "TransferSyntaxUID":
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = value
        ds.PixelData = encapsulate([frame.tobytes() for frame in gray])
    else:
        setattr(ds, key, value)
    ds.save_as(tmp_path / "u.dcm")
    with pytest.raises(SourceError, match=match):
        DicomSource(tmp_path / "u.dcm")


def _bundled(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not bundled offline")
    return path


@pytest.mark.parametrize("reference,variant", [("MR_small.dcm", "MR_small_RLE.dcm"),
                                               ("MR_small.dcm", "MR_small_bigendian.dcm"),
                                               ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
                                               ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm")])
def test_bundled_lossless_variants_equal_their_reference(reference, variant):
    """pydicom's bundled files: 16-bit signed MR with a VOI window, and odd-sized RGB, in several syntaxes."""
    np.testing.assert_array_equal(decoded(_bundled(variant)), decoded(_bundled(reference)))


@pytest.mark.parametrize("name,shape", [("examples_palette.dcm", (1, 350, 800, 3)),
                                        ("examples_ybr_color.dcm", (30, 240, 320, 3)),
                                        ("GDCMJ2K_TextGBR.dcm", (1, 400, 400, 3)),
                                        ("SC_rgb_jls_lossy_sample.dcm", (1, 100, 100, 3)),
                                        ("SC_rgb_jpeg_gdcm.dcm", (1, 100, 100, 3)),
                                        ("SC_jpeg_no_color_transform.dcm", (1, 256, 256, 3)),  # near flat
                                        ("SC_ybr_full_422_uncompressed.dcm", (1, 100, 100, 3)),
                                        ("693_J2KI.dcm", (1, 512, 512))])
def test_bundled_files_decode(name, shape):
    """Palette, JPEG YBR_FULL_422 cine, J2K YBR_RCT, JPEG-LS near-lossless, JPEG Lossless, RGB JPEG without colour
    transform, uncompressed 4:2:2, 14-bit J2K with a window: each decodes to uint8 frames of content."""
    pixels = decoded(_bundled(name))
    assert pixels.shape == shape and pixels.dtype == np.uint8 and pixels.std() > 0
