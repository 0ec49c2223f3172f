"""DICOM Segmentation Storage objects of a model's results over a DICOM source, written with highdicom: BINARY (the
class masks) or FRACTIONAL (the class probabilities, FractionalType PROBABILITY, stored as fractions of 255).

The SEG references its source the way a PACS or viewer follows it: the same Study Instance UID (and patient), the
source series in the Referenced Series Sequence, and per frame a Derivation Image Sequence naming the source
instance and frame it was computed from. One segment per foreground class, labelled with the class name and
identified as made by `ht-engine` (its version and the package sha256 as algorithm parameters). The source's pixel
spacing and slice thickness are carried over by highdicom (Pixel Measures; only when the source has both, which
readers need); a source with a Frame of Reference and orientation would carry those too, but an ultrasound cine
has neither.

Ultrasound cines usually have no Frame of Reference; highdicom then only derives a SEG from a single source frame.
So the SEG is built by highdicom for the first frame and its frames repeated for every other one, each frame's
functional groups pointing at its own source frame and its temporal position (the dimension that tells frames apart
when there is no patient coordinate system).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError
from .fileio import atomic_write, check_output_file

MANUFACTURER = "HT inference engine"
SEGMENTATION_TYPES = ("binary", "fractional")
# A FRACTIONAL SEG stores each pixel's fraction as an 8-bit value v, meaning v / MAX_FRACTIONAL_VALUE.
MAX_FRACTIONAL_VALUE = 255


def _pydicom():
    try:
        import highdicom
        import pydicom
    except ImportError as exc:
        raise InputError("DICOM Segmentation output needs highdicom: pip install 'ht-engine[dicom]'") from exc
    return pydicom, highdicom


def is_dicom_file(path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def check_dicom_source(path, option: str) -> None:
    """Refuse, before any work, a `--dicom-seg` whose source is not a DICOM file (a SEG references its source)."""
    _pydicom()
    if not is_dicom_file(path):
        raise InputError(f"{option}: {path} is not a DICOM file; a DICOM Segmentation references its DICOM source "
                         f"(image, video and folder inputs have none)")


def check_seg_output(path, option: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".dcm", ".dicom"):
        raise OutputError(f"{option} {path}: a DICOM Segmentation file ends in .dcm")
    return check_output_file(path, option)


def _algorithm(highdicom, provenance: dict):
    from highdicom.sr import CodedConcept

    return highdicom.AlgorithmIdentificationSequence(
        name="ht-engine", version=str(provenance["engine_version"]),
        family=CodedConcept("123109", "DCM", "Artificial Intelligence"),
        source=MANUFACTURER,
        parameters={"package_sha256": str(provenance["package_sha256"]), "backend": str(provenance["backend"]),
                    "precision": str(provenance["precision"])})


def fractional_planes(probability_maps, num_classes: int | None = None) -> np.ndarray:
    """One frame's class probability maps `[C,H,W]` (float, in [0, 1]: `FrameResult.probability_maps`) → what a
    FRACTIONAL SEG stores for its foreground classes: uint8 `[C-1,H,W]`, round(p · 255) (half to even)."""
    maps = np.asarray(probability_maps)
    if maps.ndim != 3 or (num_classes is not None and maps.shape[0] != num_classes) or \
            not np.issubdtype(maps.dtype, np.floating):
        raise InputError(f"a fractional DICOM Segmentation needs per-class probability maps [C,H,W] (float) per frame"
                         f"{'' if num_classes is None else f' with C={num_classes}'}; got {maps.dtype} "
                         f"{list(maps.shape)}")
    if not np.isfinite(maps).all() or maps.min() < 0.0 or maps.max() > 1.0:
        raise InputError("a fractional DICOM Segmentation stores probabilities; the maps hold values outside [0, 1] "
                         "(or NaN): pass softmax probabilities, not logits")
    return np.rint(maps[1:].astype(np.float64) * MAX_FRACTIONAL_VALUE).astype(np.uint8)


def _frame_planes(item, segmentation_type: str, num_classes: int) -> np.ndarray:
    """One frame's stored planes of the foreground classes `[C-1,H,W]`: bool (binary, from a class mask `[H,W]`)
    or uint8 fractions of 255 (fractional, from probability maps `[C,H,W]` or their `fractional_planes`)."""
    item = np.asarray(item)
    if segmentation_type == "binary":
        if item.ndim != 2:
            raise InputError(f"a binary DICOM Segmentation needs one class mask [H,W] per frame; got "
                             f"{list(item.shape)}")
        return np.stack([item == segment for segment in range(1, num_classes)])
    if item.dtype == np.uint8:
        if item.ndim != 3 or item.shape[0] != num_classes - 1:
            raise InputError(f"fractional planes are uint8 [C-1,H,W] (C-1={num_classes - 1}); got "
                             f"{list(item.shape)}")
        return item
    return fractional_planes(item, num_classes)


def build_dicom_seg(source_path, masks, classes, provenance: dict, frame_numbers=None,
                    segmentation_type: str = "binary"):
    """The Segmentation dataset of the results of the frames `frame_numbers` (0-based frame numbers of the source;
    default: every frame in order) over the DICOM file `source_path`. Per frame, `masks` holds:

    - `segmentation_type="binary"`: the uint8 class mask `[H,W]` (`FrameResult.mask`); one bit per pixel and
      foreground class;
    - `"fractional"`: the class probability maps `[C,H,W]` (float, `FrameResult.probability_maps`), or their stored
      form `fractional_planes(maps)` (uint8 `[C-1,H,W]`, at most a quarter of the memory); FractionalType PROBABILITY,
      each pixel round(p · 255) of MaximumFractionalValue 255."""
    pydicom, highdicom = _pydicom()
    from highdicom.seg import (
        SegmentAlgorithmTypeValues,
        Segmentation,
        SegmentationFractionalTypeValues,
        SegmentationTypeValues,
        SegmentDescription,
    )
    from highdicom.sr import CodedConcept

    if segmentation_type not in SEGMENTATION_TYPES:
        raise InputError(f"segmentation type {segmentation_type!r} is not one of {', '.join(SEGMENTATION_TYPES)}")
    if len(classes) < 2:
        raise InputError(f"a DICOM Segmentation needs a foreground class; the model has classes {classes}")
    planes_per_frame = [_frame_planes(item, segmentation_type, len(classes)) for item in masks]
    frame_numbers = list(range(len(planes_per_frame))) if frame_numbers is None else [int(n) for n in frame_numbers]
    if not planes_per_frame or len(frame_numbers) != len(planes_per_frame):
        raise InputError(f"a DICOM Segmentation needs one result per referenced frame; got {len(planes_per_frame)} "
                         f"results for {len(frame_numbers)} frames")
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    rows, columns = int(source.Rows), int(source.Columns)
    count = int(source.get("NumberOfFrames", 1) or 1)
    for number, planes in zip(frame_numbers, planes_per_frame):
        if planes.shape[1:] != (rows, columns) or not 0 <= number < count:
            raise InputError(f"{source_path}: the {segmentation_type} result {list(planes.shape[1:])} of frame "
                             f"{number} does not fit the source's {count} frames of {rows}x{columns}")
    # highdicom derives from one source frame when there is no Frame of Reference: give it a single-frame view of
    # the source (same instance), then repeat the frames below.
    view = copy.deepcopy(source)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector"):
        if keyword in view:
            delattr(view, keyword)
    view.SOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.6.1")  # Ultrasound Image Storage (single frame)
    algorithm = _algorithm(highdicom, provenance)
    segments = [SegmentDescription(
        segment_number=number, segment_label=str(name)[:64],
        segmented_property_category=CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=CodedConcept("85756007", "SCT", "Tissue"),
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, name in enumerate(classes) if number > 0]
    if segmentation_type == "binary":
        kind = {"segmentation_type": SegmentationTypeValues.BINARY}
        first = np.moveaxis(planes_per_frame[0], 0, -1)[None].astype(np.uint8)
    else:
        kind = {"segmentation_type": SegmentationTypeValues.FRACTIONAL,
                "fractional_type": SegmentationFractionalTypeValues.PROBABILITY,
                "max_fractional_value": MAX_FRACTIONAL_VALUE}
        first = np.moveaxis(planes_per_frame[0], 0, -1)[None].astype(np.float32) / MAX_FRACTIONAL_VALUE
    try:
        template = Segmentation(
            source_images=[view], pixel_array=first, segment_descriptions=segments,
            series_instance_uid=highdicom.UID(), series_number=int(source.get("SeriesNumber", 0) or 0) + 100,
            sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="ht-engine", software_versions=str(provenance["engine_version"]),
            device_serial_number=str(provenance["package_sha256"])[:16], series_description="ht-engine segmentation",
            omit_empty_frames=False, **kind)
    except (AttributeError, TypeError, ValueError) as exc:  # highdicom's checks of the source's attributes
        raise InputError(f"{source_path}: cannot derive a DICOM Segmentation from this source: "
                         f"{type(exc).__name__}: {exc}") from exc
    per_segment = template.PerFrameFunctionalGroupsSequence
    groups, stored = [], []
    for segment in range(1, len(classes)):
        for position, (number, planes) in enumerate(zip(frame_numbers, planes_per_frame), start=1):
            group = copy.deepcopy(per_segment[segment - 1])
            for derivation in group.DerivationImageSequence:
                for image in derivation.SourceImageSequence:
                    image.ReferencedSOPClassUID = source.SOPClassUID
                    image.ReferencedFrameNumber = number + 1
            group.FrameContentSequence[0].DimensionIndexValues = [segment, position]
            group.FrameContentSequence[0].TemporalPositionIndex = position
            groups.append(group)
            stored.append(planes[segment - 1])
    dataset = template
    dataset.PerFrameFunctionalGroupsSequence = groups
    dataset.NumberOfFrames = len(groups)
    _temporal_dimension(pydicom, dataset)
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0] and "SliceThickness" not in shared[0].PixelMeasuresSequence[0]:
        # Readers (highdicom among them) take Pixel Measures only with both spacing and thickness; a spacing
        # without a thickness (which a 2D source may lack) would make the whole object unreadable to them.
        del shared[0].PixelMeasuresSequence
    for series in dataset.ReferencedSeriesSequence:
        for instance in series.ReferencedInstanceSequence:
            instance.ReferencedSOPClassUID = source.SOPClassUID
    if segmentation_type == "binary":
        dataset.PixelData = np.packbits(np.stack(stored).ravel(), bitorder="little").tobytes()
    else:
        dataset.PixelData = np.stack(stored).astype(np.uint8).tobytes()
    return dataset


def _temporal_dimension(pydicom, dataset) -> None:
    """The dimensions: referenced segment, then temporal position (frames of a cine)."""
    from pydicom.datadict import tag_for_keyword

    organization = dataset.DimensionOrganizationSequence[0].DimensionOrganizationUID
    index = dataset.DimensionIndexSequence
    temporal = pydicom.Dataset()
    temporal.DimensionOrganizationUID = organization
    temporal.DimensionIndexPointer = tag_for_keyword("TemporalPositionIndex")
    temporal.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
    temporal.DimensionDescriptionLabel = "Temporal Position Index"
    dataset.DimensionIndexSequence = [index[0], temporal]


def write_dicom_seg(path, source_path, masks, classes, provenance: dict, frame_numbers=None,
                    segmentation_type: str = "binary") -> Path:
    """`build_dicom_seg(...)` written atomically to `path`."""
    dataset = build_dicom_seg(source_path, masks, classes, provenance, frame_numbers, segmentation_type)
    path = Path(path)
    atomic_write(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))
    return path
