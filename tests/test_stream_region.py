"""`region="scan"` / `--region scan`: frames cropped to the 2D tissue region of the Sequence of Ultrasound Regions,
masks pasted back at full size; the result equals predicting the cropped frame and pasting its mask back."""

from __future__ import annotations

import json

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("av")

from engine.cli import main  # noqa: E402
from engine.errors import SourceError  # noqa: E402
from engine.phantom import phantom_cine, write_dicom  # noqa: E402
from engine.runtime import Predictor  # noqa: E402
from engine.stream import CollectSink, DicomSource, RegionPasteSink, StreamPipeline, open_source  # noqa: E402
from tests.helpers import tiny_seg_package  # noqa: E402

REGION = (13, 9, 13 + 70 - 1, 9 + 51 - 1)  # x0, y0, x1, y1 (inclusive): a 51x70 scan inside a 75x101 screen


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_seg_package(tmp_path_factory.mktemp("pkg") / "small.htpkg", "biomedclip-vit-b16", num_classes=3, seed=5)


@pytest.fixture(scope="module")
def screen_file(tmp_path_factory):
    """A scanner screen: the phantom scan inside a frame with a bright annotation bar and a scale strip."""
    cine = phantom_cine(4, 51, 70, fps=20.0, seed=8)
    x0, y0, x1, y1 = REGION
    screens = np.zeros((4, 75, 101), np.uint8)
    screens[:, y0:y1 + 1, x0:x1 + 1] = cine.frames
    screens[:, :5, :] = 230  # annotation bar
    screens[:, 20:60, 90:95] = np.linspace(0, 255, 40, dtype=np.uint8)[:, None]  # grey scale strip
    path = tmp_path_factory.mktemp("screen") / "screen.dcm"
    write_dicom(path, screens, fps=20.0, scan_region=REGION)
    return path, screens


def add_regions(path, *items):
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(path)
    regions = []
    for spatial, kind, (x0, y0, x1, y1) in items:
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType = spatial, kind
        region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
        regions.append(region)
    ds.SequenceOfUltrasoundRegions = regions
    ds.save_as(path)


def test_scan_region_crops_and_reports(screen_file):
    path, screens = screen_file
    source = DicomSource(path, region="scan")
    x0, y0, x1, y1 = REGION
    frames = list(source)
    np.testing.assert_array_equal(np.stack([f.pixels for f in frames]), screens[:, y0:y1 + 1, x0:x1 + 1])
    np.testing.assert_array_equal(np.stack([f.full for f in frames]), screens)
    assert source.region_info == {"region": "scan", "item": 0, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                                  "spatial_format": 1, "data_type": 1, "frame_size": [75, 101]}
    assert DicomSource(path).region_info == {"region": "full"} and all(f.full is None for f in DicomSource(path))


def test_the_largest_2d_tissue_region_is_chosen(tmp_path, screen_file):
    path = tmp_path / "several.dcm"
    path.write_bytes(screen_file[0].read_bytes())
    # A Doppler spectrum (spatial format 3 = spectral), a small 2D tissue inset and the main 2D tissue region.
    add_regions(path, (3, 3, (0, 60, 100, 74)), (1, 1, (80, 5, 99, 20)), (1, 1, REGION), (1, 2, (0, 0, 100, 74)))
    region = DicomSource(path, region="scan").region
    assert (region.index, region.x0, region.y0, region.x1, region.y1) == (2, *REGION)


def test_missing_or_unusable_regions_are_refused_by_name(tmp_path, screen_file):
    path = tmp_path / "none.dcm"
    path.write_bytes(screen_file[0].read_bytes())
    add_regions(path, (3, 3, (0, 60, 100, 74)))
    with pytest.raises(SourceError, match=r"no 2D tissue region \(RegionSpatialFormat 1, RegionDataType 1\).*0: "
                                          r"RegionSpatialFormat 3, RegionDataType 3"):
        DicomSource(path, region="scan")
    add_regions(path, (1, 1, (0, 0, 101, 74)))
    with pytest.raises(SourceError, match=r"region 0 spans x 0\.\.101, y 0\.\.74, outside the 75x101 frame"):
        DicomSource(path, region="scan")
    ds = pydicom.dcmread(path)
    del ds.SequenceOfUltrasoundRegions
    ds.save_as(path)
    with pytest.raises(SourceError, match=r"needs the Sequence of Ultrasound Regions \(0018,6011\)"):
        DicomSource(path, region="scan")
    with pytest.raises(SourceError, match="region must be one of full, scan, got 'tissue'"):
        DicomSource(path, region="tissue")
    with pytest.raises(SourceError, match="region='scan' needs a DICOM file"):
        open_source(np.zeros((2, 8, 8), np.uint8), region="scan")


def test_scan_region_masks_equal_the_cropped_prediction_pasted_back(package, screen_file):
    path, screens = screen_file
    predictor = Predictor.load(package)
    source = DicomSource(path, region="scan")
    collected = CollectSink()
    StreamPipeline(predictor, policy="all", max_batch=2, sinks=[RegionPasteSink(collected, source.region)]).run(source)
    x0, y0, x1, y1 = REGION
    crops = [screen[y0:y1 + 1, x0:x1 + 1] for screen in screens]
    expected = [source.region.paste(result.mask) for result in predictor.predict(crops, batch_size=2)]
    assert [item.frame.index for item in collected.results] == [0, 1, 2, 3]
    for item, mask, screen in zip(collected.results, expected, screens):
        assert item.result.mask.shape == screen.shape and (item.result.height, item.result.width) == screen.shape
        np.testing.assert_array_equal(item.result.mask, mask)
        np.testing.assert_array_equal(item.frame.pixels, screen)  # sinks see the whole screen
    outside = np.ones(screens.shape[1:], bool)
    outside[y0:y1 + 1, x0:x1 + 1] = False
    assert all((item.result.mask[outside] == 0).all() for item in collected.results)
    assert any(item.result.mask[~outside].any() for item in collected.results)


def test_stream_command_region_scan(tmp_path, package, screen_file):
    from PIL import Image

    path, screens = screen_file
    report, masks, overlay = tmp_path / "r.json", tmp_path / "masks", tmp_path / "overlay.mkv"
    assert main(["stream", str(package), str(path), "--policy", "all", "--region", "scan", "--report", str(report),
                 "--masks", str(masks), "--out", str(overlay), "--quiet"]) == 0
    # The overlay shows the whole screen (its writer pads sizes to even), not the 51x70 crop.
    assert next(iter(open_source(overlay))).pixels.shape[:2] == tuple(n + n % 2 for n in screens.shape[1:])
    data = json.loads(report.read_text())
    assert data["region"]["region"] == "scan" and data["region"]["x0"] == REGION[0] and data["processed"] == 4
    predictor = Predictor.load(package)
    source = DicomSource(path, region="scan")
    x0, y0, x1, y1 = REGION
    expected = predictor.predict(screens[0][y0:y1 + 1, x0:x1 + 1])[0].mask
    np.testing.assert_array_equal(np.asarray(Image.open(masks / "mask_000000.png")), source.region.paste(expected))
    assert main(["stream", str(package), str(path), "--policy", "all", "--report", str(report), "--quiet"]) == 0
    assert json.loads(report.read_text())["region"] == {"region": "full"}
