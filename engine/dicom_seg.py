"""DICOM Segmentation Storage objects (binary) of a model's masks over a DICOM source, written with highdicom.

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


def build_dicom_seg(source_path, masks, classes, provenance: dict, frame_numbers=None):
    """The Segmentation dataset of `masks` (uint8 class masks `[H,W]`, one per frame in `frame_numbers`, 0-based
    frame numbers of the source; default: every frame in order) over the DICOM file `source_path`."""
    pydicom, highdicom = _pydicom()
    from highdicom.seg import SegmentAlgorithmTypeValues, Segmentation, SegmentationTypeValues, SegmentDescription
    from highdicom.sr import CodedConcept

    masks = [np.asarray(mask) for mask in masks]
    frame_numbers = list(range(len(masks))) if frame_numbers is None else [int(n) for n in frame_numbers]
    if not masks or len(frame_numbers) != len(masks):
        raise InputError(f"a DICOM Segmentation needs one mask per referenced frame; got {len(masks)} masks for "
                         f"{len(frame_numbers)} frames")
    if len(classes) < 2:
        raise InputError(f"a DICOM Segmentation needs a foreground class; the model has classes {classes}")
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    rows, columns = int(source.Rows), int(source.Columns)
    count = int(source.get("NumberOfFrames", 1) or 1)
    for number, mask in zip(frame_numbers, masks):
        if mask.shape != (rows, columns) or not 0 <= number < count:
            raise InputError(f"{source_path}: mask {mask.shape} of frame {number} does not fit the source's "
                             f"{count} frames of {rows}x{columns}")
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
    try:
        template = Segmentation(
            source_images=[view], pixel_array=masks[0][None].astype(np.uint8),
            segmentation_type=SegmentationTypeValues.BINARY, segment_descriptions=segments,
            series_instance_uid=highdicom.UID(), series_number=int(source.get("SeriesNumber", 0) or 0) + 100,
            sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="ht-engine", software_versions=str(provenance["engine_version"]),
            device_serial_number=str(provenance["package_sha256"])[:16], series_description="ht-engine segmentation",
            omit_empty_frames=False)
    except (AttributeError, TypeError, ValueError) as exc:  # highdicom's checks of the source's attributes
        raise InputError(f"{source_path}: cannot derive a DICOM Segmentation from this source: "
                         f"{type(exc).__name__}: {exc}") from exc
    per_segment = template.PerFrameFunctionalGroupsSequence
    groups, planes = [], []
    for segment in range(1, len(classes)):
        for position, (number, mask) in enumerate(zip(frame_numbers, masks), start=1):
            group = copy.deepcopy(per_segment[segment - 1])
            for derivation in group.DerivationImageSequence:
                for image in derivation.SourceImageSequence:
                    image.ReferencedSOPClassUID = source.SOPClassUID
                    image.ReferencedFrameNumber = number + 1
            group.FrameContentSequence[0].DimensionIndexValues = [segment, position]
            group.FrameContentSequence[0].TemporalPositionIndex = position
            groups.append(group)
            planes.append(mask == segment)
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
    dataset.PixelData = np.packbits(np.stack(planes).ravel(), bitorder="little").tobytes()
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


def write_dicom_seg(path, source_path, masks, classes, provenance: dict, frame_numbers=None) -> Path:
    """`build_dicom_seg(...)` written atomically to `path`."""
    dataset = build_dicom_seg(source_path, masks, classes, provenance, frame_numbers)
    path = Path(path)
    atomic_write(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))
    return path
