"""Clinical I/O: `predict` on every input `stream` takes, DICOM Segmentation objects, palette masks and overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pydicom = pytest.importorskip("pydicom")

from PIL import Image  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.config import AUTHORS_PREPROCESSING  # noqa: E402
from engine.images import colorize_mask, content_region, draw_overlay, write_mask_png  # noqa: E402
from engine.package import save_package  # noqa: E402
from engine.phantom import phantom_cine, write_dicom, write_video  # noqa: E402
from engine.postprocess import FrameResult  # noqa: E402
from engine.version import __version__  # noqa: E402
from tests.helpers import small_config, small_tensors  # noqa: E402


def _package(directory, task: str, num_classes: int):
    cfg = small_config("openai-clip-vit-b16", task=task, num_classes=num_classes, image_size=64, layers=2,
                       extract_layers=[0, 1], adapter_layers=[0, 1],
                       preprocessing={**AUTHORS_PREPROCESSING, "size": 64})
    path = directory / f"{task}{num_classes}.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=5))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("pkg"), "seg", 3)


@pytest.fixture(scope="module")
def cls_package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("pkg"), "cls", 2)


def _read_mask(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


def _stream_masks(tmp_path, package, source) -> list:
    masks = tmp_path / "stream_masks"
    assert main(["stream", str(package), str(source), "--policy", "all", "--max-batch", "1", "--masks", str(masks),
                 "--quiet"]) == 0
    return [_read_mask(path) for path in sorted(masks.glob("mask_*.png"))]


@pytest.mark.parametrize("kind", ["mp4", "dcm"])
def test_predict_on_video_and_cine_equals_stream_all(tmp_path, package, kind):
    cine = phantom_cine(5, 45, 62, fps=10.0, seed=2)
    source = tmp_path / f"cine.{kind}"
    if kind == "dcm":
        write_dicom(source, cine.frames, fps=10.0)
    else:
        write_video(source, cine.frames, fps=10.0, lossless=True)
    out = tmp_path / "out"
    assert main(["predict", str(package), str(source), "--out", str(out), "--batch-size", "1"]) == 0
    results = json.loads((out / "predictions.json").read_text())["results"]
    assert [(r["index"], r["input"], r["frame"]) for r in results] == [(i, str(source), i) for i in range(5)]
    assert len({r["mask"] for r in results}) == 5
    streamed = _stream_masks(tmp_path, package, source)
    assert len(streamed) == 5
    for entry, expected in zip(results, streamed):
        np.testing.assert_array_equal(_read_mask(entry["mask"]), expected)


def test_predict_mixes_images_folders_and_files_with_distinct_names(tmp_path, package, capsys):
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(1, 255, (33, 47), dtype=np.uint8)).save(tmp_path / folder / "scan.png")
    write_dicom(tmp_path / "a" / "scan.dcm", phantom_cine(3, 40, 48, seed=1).frames)
    out = tmp_path / "out"
    assert main(["predict", str(package), str(tmp_path / "a" / "scan.png"), str(tmp_path / "b"),
                 str(tmp_path / "a" / "scan.dcm"), "--out", str(out)]) == 0
    results = json.loads((out / "predictions.json").read_text())["results"]
    assert [r["frame"] for r in results] == [0, 0, 0, 1, 2]
    assert [r["index"] for r in results] == list(range(5))
    names = [r["mask"] for r in results]
    assert len(set(names)) == 5 and all(name.endswith("_mask.png") for name in names)
    assert (out / "scan_3_frame00002_mask.png").is_file()
    printed = capsys.readouterr().out
    assert f"overlays: 5 in {out}" in printed


def test_mask_png_is_a_palette_of_class_ids(tmp_path):
    mask = np.random.default_rng(3).integers(0, 3, (17, 29), dtype=np.uint8)
    write_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), mask)
        palette = np.array(image.getpalette()[:9]).reshape(3, 3)
    np.testing.assert_array_equal(palette, colorize_mask(np.arange(3)))


def test_overlay_is_clipped_to_the_image_content_and_has_a_legend():
    pixels = np.zeros((60, 90), dtype=np.uint8)
    pixels[:, 20:70] = np.random.default_rng(4).integers(1, 255, (60, 50), dtype=np.uint8)
    pixels[30:40, 40:50] = 0  # dark content inside the image stays content
    region = content_region(pixels)
    assert region[:, 20:70].all() and not region[:, :20].any() and not region[:, 70:].any()
    mask = np.ones((60, 90), dtype=np.uint8)
    out = draw_overlay(pixels, FrameResult(0, 60, 90, mask=mask, classes=["bg", "lesion"]), legend=True)
    np.testing.assert_array_equal(out[30:, :19], 0)  # no tint outside the content, below the legend
    assert (out[45, 30] != pixels[45, 30]).any()  # tinted inside
    assert (out[:12, :10] != 0).any()  # the legend's swatch


def _seg_frames(path):
    import highdicom

    seg = highdicom.seg.segread(path)
    return seg, seg.pixel_array


@pytest.mark.parametrize("photometric,frames", [("MONOCHROME2", 4), ("RGB", 3), ("MONOCHROME2", 1)])
def test_dicom_seg_from_predict_matches_its_masks(tmp_path, package, photometric, frames):
    pytest.importorskip("highdicom")
    source = tmp_path / "study.dcm"
    write_dicom(source, phantom_cine(frames, 40, 52, fps=12.0, seed=6).frames, fps=12.0, photometric=photometric)
    with_spacing = pydicom.dcmread(source)
    with_spacing.PixelSpacing, with_spacing.SliceThickness = [0.25, 0.3], 1.5
    with_spacing.save_as(source)
    out = tmp_path / "out"
    assert main(["predict", str(package), str(source), "--out", str(out), "--dicom-seg"]) == 0
    results = json.loads((out / "predictions.json").read_text())["results"]
    masks = [_read_mask(r["mask"]) for r in results]
    seg_path = out / "study_seg.dcm"
    seg, planes = _seg_frames(seg_path)
    assert seg.get_segment_numbers() == [1, 2]
    planes = planes.reshape(2, frames, 40, 52)  # segment-major: every frame of segment 1, then of segment 2
    for number, mask in enumerate(masks):
        for segment in (1, 2):
            np.testing.assert_array_equal(planes[segment - 1, number], mask == segment)
    ds, src = pydicom.dcmread(seg_path), pydicom.dcmread(source)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY" and int(ds.NumberOfFrames) == 2 * frames
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.PatientID == src.PatientID
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.25, 0.3] and float(measures.SliceThickness) == 1.5
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    for position, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        image = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert image.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert image.ReferencedSOPClassUID == src.SOPClassUID
        assert int(image.ReferencedFrameNumber) == position % frames + 1
    labels = [segment.SegmentLabel for segment in ds.SegmentSequence]
    assert labels == json.loads((out / "predictions.json").read_text())["classes"][1:]
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ht-engine" and algorithm.AlgorithmVersion == __version__
    sha = json.loads((out / "predictions.json").read_text())["package_sha256"]
    assert f"package_sha256={sha}" in algorithm.AlgorithmParameters


def test_dicom_seg_from_stream_references_the_processed_frames(tmp_path, package):
    pytest.importorskip("highdicom")
    source = tmp_path / "cine.dcm"
    write_dicom(source, phantom_cine(4, 40, 52, seed=7).frames)
    spacing_only = pydicom.dcmread(source)  # a spacing without a thickness: left out, so readers still read it
    spacing_only.PixelSpacing = [0.25, 0.3]
    spacing_only.save_as(source)
    seg_path = tmp_path / "seg" / "cine_seg.dcm"
    masks = tmp_path / "masks"
    assert main(["stream", str(package), str(source), "--policy", "all", "--masks", str(masks), "--dicom-seg",
                 str(seg_path), "--quiet"]) == 0
    _, planes = _seg_frames(seg_path)
    planes = planes.reshape(2, 4, 40, 52)
    for number, path in enumerate(sorted(masks.glob("mask_*.png"))):
        mask = _read_mask(path)
        for segment in (1, 2):
            np.testing.assert_array_equal(planes[segment - 1, number], mask == segment)


def test_dicom_seg_refuses_non_dicom_sources_and_cls_models_before_work(tmp_path, package, cls_package, capsys):
    pytest.importorskip("highdicom")
    video = tmp_path / "cine.mp4"
    write_video(video, phantom_cine(2, 32, 32, seed=1).frames)
    assert main(["stream", str(package), str(video), "--dicom-seg", str(tmp_path / "s.dcm"), "--quiet"]) == 2
    assert "is not a DICOM file" in capsys.readouterr().err
    assert main(["predict", str(package), str(video), "--out", str(tmp_path / "o"), "--dicom-seg"]) == 2
    assert "is not a DICOM file" in capsys.readouterr().err
    assert not (tmp_path / "o" / "predictions.json").exists()
    dicom = tmp_path / "cine.dcm"
    write_dicom(dicom, phantom_cine(2, 32, 32, seed=1).frames)
    assert main(["predict", str(cls_package), str(dicom), "--out", str(tmp_path / "c"), "--dicom-seg"]) == 2
    assert "needs a segmentation model" in capsys.readouterr().err
    assert not (tmp_path / "c" / "predictions.json").exists()
    assert main(["stream", str(package), str(dicom), "--dicom-seg", str(tmp_path / "s.txt"), "--quiet"]) == 2
    assert "ends in .dcm" in capsys.readouterr().err


def test_demo_overlay_shows_ground_truth_dice_and_latency():
    from engine.commands.demo import dice, ground_truth_decorator
    from engine.stream import Frame, StreamResult

    truth = np.zeros((2, 80, 120), dtype=np.uint8)
    truth[1, 10:30, 40:70] = 1
    predicted = np.zeros((80, 120), dtype=np.uint8)
    predicted[10:30, 40:55] = 1
    assert dice(predicted > 0, truth[1] > 0) == pytest.approx(2 * 300 / (300 + 600))
    assert dice(predicted[:0] > 0, truth[0, :0] > 0) == 1.0
    scores = []
    decorate = ground_truth_decorator(truth, scores)
    pixels = np.full((80, 120), 90, dtype=np.uint8)
    item = StreamResult(Frame(1, 0.0, pixels), FrameResult(1, 80, 120, mask=predicted, classes=["bg", "lesion"]),
                        0.025)
    rgb = decorate(item, draw_overlay(pixels, item.result, legend=True))
    assert scores == [pytest.approx(2 / 3)]
    np.testing.assert_array_equal(rgb[10, 60], [255, 255, 255])  # the ground truth's contour, past the prediction
    band = rgb[40:]  # three caption lines of 12 pixels, on black, at the bottom
    assert (band > 128).any() and band.mean() < 45  # light text on a black band over the gray frame


def test_predict_checks_every_input_before_the_first_frame(tmp_path, package, capsys):
    image = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(5).integers(1, 255, (30, 40), dtype=np.uint8)).save(image)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    assert main(["predict", str(package), str(image), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# A FRACTIONAL SEG stores round(p * 255): its decoded fraction is within half a step of the probability it stores,
# plus the float32 rounding by which two computations of the same probability (the frame path's and a float64
# reference from the full logits) differ.
HALF_STEP = 0.5 / 255
FLOAT32_ROUNDING = 1e-5


def _source_frames(source) -> list:
    from engine.stream import DicomSource

    return [frame.pixels for frame in DicomSource(source)]


def _decoded_fractions(seg_path, source, frames: int, segments: int) -> np.ndarray:
    """`[frame, segment, H, W]` fractions of a FRACTIONAL SEG, decoded by highdicom through each frame's reference
    to its source frame."""
    import highdicom

    seg = highdicom.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=pydicom.dcmread(source).SOPInstanceUID, source_frame_numbers=list(range(1, frames + 1)),
        segment_numbers=list(range(1, segments + 1)), rescale_fractional=True)
    return np.moveaxis(np.asarray(pixels, dtype=np.float64), -1, 1)


def _reference_probabilities(predictor, frames) -> list:
    """float64 per-pixel class probabilities computed independently of the frame path: the model's full logits
    (`forward`), upsampled to each frame, softmax in float64."""
    from engine.postprocess import softmax, upsample_logits

    logits = predictor.forward(predictor.preprocess(frames))
    return [softmax(upsample_logits(one, *frame.shape[:2]).astype(np.float64), axis=0)
            for one, frame in zip(logits, frames)]


@pytest.mark.parametrize("photometric,frames", [("MONOCHROME2", 4), ("RGB", 3), ("MONOCHROME2", 1), ("RGB", 1)])
def test_fractional_dicom_seg_from_predict_holds_the_predictor_probabilities(tmp_path, package, photometric, frames):
    pytest.importorskip("highdicom")
    from engine import Predictor

    source = tmp_path / "study.dcm"
    write_dicom(source, phantom_cine(frames, 40, 52, fps=12.0, seed=6).frames, fps=12.0, photometric=photometric)
    out = tmp_path / "out"
    assert main(["predict", str(package), str(source), "--out", str(out), "--dicom-seg",
                 "--dicom-seg-type", "fractional"]) == 0
    seg_path = out / "study_seg.dcm"
    ds, src = pydicom.dcmread(seg_path), pydicom.dcmread(source)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    assert int(ds.MaximumFractionalValue) == 255 and int(ds.BitsAllocated) == 8
    assert int(ds.NumberOfFrames) == 2 * frames and ds.StudyInstanceUID == src.StudyInstanceUID
    assert [segment.SegmentLabel for segment in ds.SegmentSequence] == ["class_1", "class_2"]
    for position, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        image = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert image.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert int(image.ReferencedFrameNumber) == position % frames + 1
    decoded = _decoded_fractions(seg_path, source, frames, 2)
    pixels = _source_frames(source)
    predictor = Predictor.load(package)
    results = predictor.with_probability_maps().predict(pixels)
    for number, (result, reference) in enumerate(zip(results, _reference_probabilities(predictor, pixels))):
        expected = np.rint(result.probability_maps[1:].astype(np.float64) * 255) / 255
        np.testing.assert_array_equal(decoded[number], expected.astype(np.float32))
        np.testing.assert_allclose(decoded[number], reference[1:], rtol=0, atol=HALF_STEP + FLOAT32_ROUNDING)
    masks = [_read_mask(r["mask"]) for r in json.loads((out / "predictions.json").read_text())["results"]]
    for number, mask in enumerate(masks):
        background = 1.0 - decoded[number].sum(axis=0)
        from_fractions = np.argmax(np.concatenate([background[None], decoded[number]]), axis=0)
        assert float((from_fractions == mask).mean()) >= 0.99


def test_fractional_dicom_seg_from_stream_holds_the_processed_frames(tmp_path, package):
    pytest.importorskip("highdicom")
    from engine import Predictor

    source = tmp_path / "cine.dcm"
    write_dicom(source, phantom_cine(4, 40, 52, seed=7).frames)
    seg_path = tmp_path / "seg" / "cine_seg.dcm"
    assert main(["stream", str(package), str(source), "--policy", "all", "--dicom-seg", str(seg_path),
                 "--dicom-seg-type", "fractional", "--quiet"]) == 0
    assert pydicom.dcmread(seg_path).SegmentationType == "FRACTIONAL"
    decoded = _decoded_fractions(seg_path, source, 4, 2)
    results = Predictor.load(package).with_probability_maps().predict(_source_frames(source), batch_size=1)
    for number, result in enumerate(results):
        expected = np.rint(result.probability_maps[1:].astype(np.float64) * 255) / 255
        np.testing.assert_array_equal(decoded[number], expected.astype(np.float32))


def test_fractional_dicom_seg_is_written_atomically(tmp_path, monkeypatch):
    pytest.importorskip("highdicom")
    from engine.dicom_seg import write_dicom_seg
    from engine.postprocess import softmax

    source = tmp_path / "cine.dcm"
    write_dicom(source, phantom_cine(2, 24, 30, seed=3).frames)
    rng = np.random.default_rng(4)
    maps = [softmax(rng.normal(size=(3, 24, 30)).astype(np.float32), axis=0) for _ in range(2)]
    provenance = {"engine_version": __version__, "package_sha256": "0" * 64, "backend": "reference",
                  "precision": "fp32"}
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"the previous segmentation")

    def fail_halfway(self, path, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pydicom.Dataset, "save_as", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_seg(target, source, maps, ["bg", "a", "b"], provenance, segmentation_type="fractional")
    assert target.read_bytes() == b"the previous segmentation"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cine.dcm", "seg.dcm"]


def test_fractional_dicom_seg_refuses_what_it_cannot_store(tmp_path, package, cls_package, capsys):
    pytest.importorskip("highdicom")
    from engine import Predictor
    from engine.dicom_seg import build_dicom_seg, fractional_planes
    from engine.errors import InputError
    from engine.runner import Runner
    from engine.runtime import Predictor as RuntimePredictor
    from engine.stream import DicomSegSink, Frame, StreamResult

    dicom = tmp_path / "cine.dcm"
    write_dicom(dicom, phantom_cine(2, 32, 32, seed=1).frames)
    assert main(["predict", str(package), str(dicom), "--out", str(tmp_path / "o"), "--dicom-seg-type",
                 "fractional"]) == 2
    assert "add --dicom-seg" in capsys.readouterr().err
    assert main(["stream", str(package), str(dicom), "--dicom-seg-type", "fractional", "--quiet"]) == 2
    assert "add --dicom-seg" in capsys.readouterr().err
    assert main(["predict", str(cls_package), str(dicom), "--out", str(tmp_path / "c"), "--dicom-seg",
                 "--dicom-seg-type", "fractional"]) == 2
    assert "needs a segmentation model" in capsys.readouterr().err
    assert not (tmp_path / "c" / "predictions.json").exists()
    with pytest.raises(InputError, match="need a segmentation model"):
        Predictor.load(cls_package).with_probability_maps()
    frame_artifact = RuntimePredictor(
        Runner(run=None, uses_torch=False, device="cpu", precision="fp32", run_frames=lambda frames: None,
               frame_shape=(32, 32)),
        task="seg", classes=["bg", "a"], preprocessing={}, image_size=64, backend="onnx", source=tmp_path / "art")
    with pytest.raises(InputError, match="frame artifact: it returns masks only"):
        frame_artifact.with_probability_maps()
    logits = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match="outside \\[0, 1\\]"):
        fractional_planes(logits)
    with pytest.raises(InputError, match="C=3"):
        fractional_planes(np.full((2, 32, 32), 0.5, dtype=np.float32), 3)
    provenance = Predictor.load(package).provenance()
    with pytest.raises(InputError, match="not one of binary, fractional"):
        build_dicom_seg(dicom, [np.zeros((32, 32), np.uint8)], ["bg", "a"], provenance, segmentation_type="labelmap")
    sink = DicomSegSink(tmp_path / "s.dcm", provenance, segmentation_type="fractional")
    sink.open({"task": "seg", "classes": ["bg", "a", "b"], "source": str(dicom)})
    mask_only = FrameResult(0, 32, 32, mask=np.zeros((32, 32), np.uint8), classes=["bg", "a", "b"])
    with pytest.raises(InputError, match="with_probability_maps"):
        sink.write(StreamResult(Frame(0, 0.0, np.zeros((32, 32), np.uint8)), mask_only, 0.0))
