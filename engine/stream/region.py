"""The scan region of an ultrasound frame: crop frames to it before inference, paste masks back at full size.

Ultrasound DICOM frames carry more than the image (annotations, a colour bar, a waveform strip, the scanner's
menus). The Sequence of Ultrasound Regions (0018,6011) says where each part lies; the 2D tissue region
(RegionSpatialFormat 1 = 2D, RegionDataType 1 = tissue) is what a segmentation model was trained on. A source opened
with `region="scan"` yields that crop (`Frame.pixels`) and keeps the whole frame (`Frame.full`); `RegionPasteSink`
puts each mask back at the whole frame's size (background outside the region) before any sink of yours sees it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import SourceError

REGIONS = ("full", "scan")
SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1


@dataclass(frozen=True)
class ScanRegion:
    """One item of the Sequence of Ultrasound Regions: pixel bounds (max inclusive, as DICOM states them)."""

    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    frame_height: int
    frame_width: int
    spatial_format: int = SPATIAL_FORMAT_2D
    data_type: int = DATA_TYPE_TISSUE

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """HxW(x3) frame → the region's pixels (a contiguous copy)."""
        return np.ascontiguousarray(pixels[self.y0:self.y1 + 1, self.x0:self.x1 + 1])

    def paste(self, mask: np.ndarray, background: int = 0) -> np.ndarray:
        """Region-sized mask → frame-sized mask, `background` outside the region."""
        full = np.full((self.frame_height, self.frame_width), background, dtype=mask.dtype)
        full[self.y0:self.y1 + 1, self.x0:self.x1 + 1] = mask
        return full

    def paste_result(self, result):
        """A `FrameResult` of the crop → the same result at the frame's size (classification results keep theirs)."""
        mask = None if result.mask is None else self.paste(result.mask)
        return dataclasses.replace(result, height=self.frame_height, width=self.frame_width, mask=mask)

    def info(self) -> dict:
        return {"region": "scan", "item": self.index, "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1,
                "spatial_format": self.spatial_format, "data_type": self.data_type,
                "frame_size": [self.frame_height, self.frame_width]}


def scan_region(dataset, name: str) -> ScanRegion:
    """The 2D tissue region of `dataset`'s Sequence of Ultrasound Regions (the largest, if several)."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if "SequenceOfUltrasoundRegions" not in dataset or not len(dataset.SequenceOfUltrasoundRegions):
        raise SourceError(f"{name}: --region scan needs the Sequence of Ultrasound Regions (0018,6011), which this "
                          f"file lacks; use the whole frame (--region full)", source=name)
    candidates = []
    for index, item in enumerate(dataset.SequenceOfUltrasoundRegions):
        spatial, kind = int(item.get("RegionSpatialFormat", -1)), int(item.get("RegionDataType", -1))
        keys = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
        if spatial != SPATIAL_FORMAT_2D or kind != DATA_TYPE_TISSUE or any(key not in item for key in keys):
            continue
        x0, y0, x1, y1 = (int(item.get(key)) for key in keys)
        if not (0 <= x0 <= x1 < columns and 0 <= y0 <= y1 < rows):
            raise SourceError(f"{name}: ultrasound region {index} spans x {x0}..{x1}, y {y0}..{y1}, outside the "
                              f"{rows}x{columns} frame; expected RegionLocation bounds inside it", source=name)
        candidates.append(ScanRegion(index, x0, y0, x1, y1, rows, columns, spatial, kind))
    if not candidates:
        found = ", ".join(f"{i}: RegionSpatialFormat {int(item.get('RegionSpatialFormat', -1))}, RegionDataType "
                          f"{int(item.get('RegionDataType', -1))}"
                          for i, item in enumerate(dataset.SequenceOfUltrasoundRegions))
        raise SourceError(f"{name}: no 2D tissue region (RegionSpatialFormat 1, RegionDataType 1) in the Sequence of "
                          f"Ultrasound Regions ({found}); use the whole frame (--region full)", source=name)
    return max(candidates, key=lambda r: ((r.x1 - r.x0 + 1) * (r.y1 - r.y0 + 1), -r.index))


class RegionPasteSink:
    """Wraps a sink: each result of a cropped frame reaches it at full frame size, with the whole frame's pixels."""

    def __init__(self, sink, region: ScanRegion):
        self.sink, self.region = sink, region

    def open(self, info: dict) -> None:
        self.sink.open({**info, "region": self.region.info()})

    def write(self, item) -> None:
        frame = item.frame
        full = frame.full if frame.full is not None else frame.pixels
        self.sink.write(dataclasses.replace(item, frame=dataclasses.replace(frame, pixels=full, full=None),
                                            result=self.region.paste_result(item.result)))

    def close(self) -> None:
        self.sink.close()
