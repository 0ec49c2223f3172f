"""The phantom generator: deterministic, B-mode-like properties hold, lesions move and deform, writers are valid."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.phantom import PhantomGenerator, phantom_cine, write_dicom, write_video
from engine.synthetic import synthetic_frame


@pytest.fixture(scope="module")
def cine():
    return phantom_cine(24, 121, 160, fps=20.0, seed=7)


def test_deterministic_per_seed(cine):
    again = phantom_cine(24, 121, 160, fps=20.0, seed=7)
    np.testing.assert_array_equal(again.frames, cine.frames)
    np.testing.assert_array_equal(again.masks, cine.masks)
    other = phantom_cine(3, 121, 160, seed=8)
    assert not np.array_equal(other.frames[0], cine.frames[0])
    assert cine.frames.dtype == np.uint8 and cine.frames.shape == (24, 121, 160)
    np.testing.assert_allclose(cine.timestamps, np.arange(24) / 20.0)


def test_sector_mask(cine):
    outside = ~cine.sector
    assert outside.any() and cine.sector.mean() > 0.3
    assert (cine.frames[:, outside] == 0).all()
    assert not (cine.masks[:, outside]).any()
    assert not cine.sector[0, 0] and not cine.sector[0, -1]  # the fan narrows to the apex at the top
    assert cine.sector[-2, cine.sector.shape[1] // 2]


def test_lesions_are_hypoechoic_and_move_and_deform(cine):
    inside = cine.frames[cine.masks].astype(np.float64)
    tissue = cine.frames[:, cine.sector][~cine.masks[:, cine.sector]].astype(np.float64)
    assert inside.size and inside.mean() < 0.6 * tissue.mean()
    areas = cine.masks.reshape(len(cine.masks), -1).sum(axis=1)
    assert areas.min() > 0 and areas.max() > areas.min()  # the lesions breathe
    centroids = [np.argwhere(mask).mean(axis=0) for mask in cine.masks]
    assert np.linalg.norm(centroids[-1] - centroids[0]) > 0.5  # and drift


def test_speckle_is_rayleigh_like():
    generator = PhantomGenerator(96, 128, seed=1, lesions=0)
    generator.frame(0)
    amplitude = np.abs(generator.speckle)
    # Rayleigh with unit mean power: E|z|^2 = 1, mean = sqrt(pi)/2.
    assert abs(np.mean(amplitude ** 2) - 1.0) < 0.05
    assert abs(amplitude.mean() - np.sqrt(np.pi) / 2) < 0.03
    first = generator.speckle.copy()
    generator.frame(1)
    correlation = np.abs(np.vdot(first, generator.speckle)) / (np.linalg.norm(first) * np.linalg.norm(
        generator.speckle))
    assert 0.6 < correlation < 0.95  # decorrelates slowly, not frozen and not independent


def test_shadow_below_reflector_and_depth_gain():
    generator = PhantomGenerator(160, 200, seed=2, lesions=0)
    frame, _ = generator.frame(0)
    frame = frame.astype(np.float64)
    beam = np.abs(generator.angle - generator.reflector_angle) < 0.5 * generator.reflector_width
    below = beam & (generator.depth > generator.reflector_depth + 0.1) & generator.sector
    beside = (np.abs(generator.angle - generator.reflector_angle) > 2 * generator.reflector_width) & (
        generator.depth > generator.reflector_depth + 0.1) & generator.sector
    assert frame[below].mean() < 0.7 * frame[beside].mean()
    reflector = beam & (np.abs(generator.depth - generator.reflector_depth) < 0.008)
    assert frame[reflector].mean() > 1.3 * frame[beside].mean()
    shallow = generator.sector & (generator.depth > 0.15) & (generator.depth < 0.3) & ~beam
    deep = generator.sector & (generator.depth > 0.8) & ~beam
    assert frame[shallow].mean() > frame[deep].mean()


def test_reverberation_bands_are_periodic_in_depth():
    generator = PhantomGenerator(200, 200, seed=3, lesions=0)
    frames = np.stack([generator.frame(t)[0] for t in range(8)]).astype(np.float64)
    near = generator.sector & (generator.depth < 0.25) & (np.abs(generator.angle) < 0.2)
    depth_bins = np.round(generator.depth[near] / 0.01).astype(int)
    profile = np.bincount(depth_bins, weights=frames.mean(axis=0)[near]) / np.maximum(np.bincount(depth_bins), 1)
    profile = profile[profile > 0]
    assert profile.max() > 1.15 * np.median(profile)


def test_bad_arguments():
    with pytest.raises(InputError, match="at least one frame"):
        phantom_cine(0)
    with pytest.raises(InputError, match="16x16"):
        PhantomGenerator(8, 8)
    with pytest.raises(InputError, match="photometric must be one of"):
        write_dicom("x.dcm", np.zeros((1, 4, 4), np.uint8), photometric="HSV")
    with pytest.raises(InputError, match="transfer_syntax must be one of"):
        write_dicom("x.dcm", np.zeros((1, 4, 4), np.uint8), transfer_syntax="mpeg2")
    with pytest.raises(InputError, match="scan_region"):
        write_dicom("x.dcm", np.zeros((1, 4, 4), np.uint8), scan_region=(0, 0, 4, 3))
    with pytest.raises(InputError, match="extension"):
        write_video("x.gif", np.zeros((1, 4, 4), np.uint8))


def test_synthetic_frame_still_works():
    frame, mask = synthetic_frame(64, 80, seed=1, lesions=2)
    assert frame.shape == (64, 80) and frame.dtype == np.uint8 and mask.any()


def test_phantom_command_writes_dicom_video_and_masks(tmp_path, capsys):
    pytest.importorskip("av")
    pydicom = pytest.importorskip("pydicom")
    from engine.cli import main

    dcm, mp4, masks = tmp_path / "cine.dcm", tmp_path / "cine.mp4", tmp_path / "masks.npy"
    assert main(["phantom", "--frames", "4", "--height", "48", "--width", "64", "--out", str(dcm),
                 "--masks", str(masks)]) == 0
    assert main(["phantom", "--frames", "4", "--height", "48", "--width", "64", "--out", str(mp4)]) == 0
    ds = pydicom.dcmread(dcm)
    expected = phantom_cine(4, 48, 64)
    np.testing.assert_array_equal(ds.pixel_array, expected.frames)
    np.testing.assert_array_equal(np.load(masks), expected.masks.astype(np.uint8))
    assert mp4.stat().st_size > 0 and str(dcm) in capsys.readouterr().out
    assert main(["phantom", "--frames", "2", "--out", str(tmp_path / "cine.gif")]) == 2
    region = ds.SequenceOfUltrasoundRegions[0]
    rows, columns = np.nonzero(expected.sector)
    assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)
    assert (region.RegionLocationMinX0, region.RegionLocationMinY0, region.RegionLocationMaxX1,
            region.RegionLocationMaxY1) == (columns.min(), rows.min(), columns.max(), rows.max())


@pytest.mark.parametrize("syntax,photometric,uid,stored", [
    ("jpeg-ls", "PALETTE COLOR", "1.2.840.10008.1.2.4.80", "PALETTE COLOR"),
    ("jpeg2000", "RGB", "1.2.840.10008.1.2.4.90", "YBR_RCT"),
    ("jpeg-baseline", "YBR_FULL_422", "1.2.840.10008.1.2.4.50", "YBR_FULL_422"),
    ("rle", "MONOCHROME2", "1.2.840.10008.1.2.5", "MONOCHROME2"),
])
def test_phantom_command_transfer_syntax_and_photometric(tmp_path, syntax, photometric, uid, stored):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("pylibjpeg")
    pytest.importorskip("jpeg_ls")
    from engine.cli import main

    out = tmp_path / "cine.dcm"
    assert main(["phantom", "--frames", "2", "--height", "48", "--width", "64", "--out", str(out),
                 "--transfer-syntax", syntax, "--photometric", photometric]) == 0
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == uid and ds.PhotometricInterpretation == stored


def test_phantom_command_refuses_invalid_dicom_options(tmp_path, capsys):
    from engine.cli import main

    assert main(["phantom", "--frames", "2", "--out", str(tmp_path / "c.dcm"), "--transfer-syntax", "jpeg-baseline",
                 "--photometric", "PALETTE COLOR"]) == 2
    assert main(["phantom", "--frames", "2", "--out", str(tmp_path / "c.mp4"), "--transfer-syntax", "rle"]) == 2
    err = capsys.readouterr().err
    assert "--photometric PALETTE COLOR cannot be stored as --transfer-syntax jpeg-baseline" in err
    assert "apply to .dcm output, not .mp4" in err
