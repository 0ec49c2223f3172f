"""An AOTInductor frame artifact (`build --backend aoti --frame-size HxW`): one CPU compile of the frame graph
(over a minute on 2 cores), uint8 RGB frames in, masks out, against `Predictor.predict` of the package."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Predictor
from engine.artifacts import open_artifact
from engine.config import AUTHORS_PREPROCESSING
from engine.errors import InputError
from engine.export.build import build_artifact
from engine.export.manifest import BatchRange, FrameSpec
from engine.package import save_package
from tests.helpers import small_config, small_tensors
from tests.test_frame_artifacts import MIN_AGREEMENT, agreement, frames_for

SIZE = 64
FRAME = FrameSpec(120, 160, 3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("aoti-frames")
    cfg = small_config("biomedclip-vit-b16", "seg", num_classes=2, image_size=SIZE,
                       preprocessing=dict(AUTHORS_PREPROCESSING, size=SIZE))
    save_package(workdir / "seg.htpkg", cfg, small_tensors(cfg, seed=3))
    artifact = open_artifact(build_artifact(workdir / "seg.htpkg", "aoti", "fp32", BatchRange(1, 2, 8),
                                            workdir / "seg-aoti", frame=FRAME))
    return Predictor.load(workdir / "seg.htpkg"), artifact


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 5])
def test_aoti_frame_masks_match_the_reference(built, batch):
    reference, artifact = built
    predictor = Predictor.load(artifact.directory)
    assert artifact.manifest["frame"] == FRAME.to_dict() and predictor.runner.frame_shape == FRAME.shape
    frames = frames_for(*FRAME.shape[:2], 3, batch, seed=40 + batch)
    results = predictor.predict(frames)
    assert [r.mask.shape for r in results] == [FRAME.shape[:2]] * batch
    assert agreement(results, reference.predict(frames)) >= MIN_AGREEMENT


@pytest.mark.slow
def test_aoti_frame_artifact_refuses_tensors_and_other_sizes(built):
    predictor = Predictor.load(built[1].directory)
    with pytest.raises(InputError, match="frame artifact .*predict"):
        predictor.forward(np.zeros((1, 3, SIZE, SIZE), dtype=np.float32))
    with pytest.raises(InputError, match=r"shape \[120, 160\].*\[120, 160, 3\]"):
        predictor.predict(np.zeros((120, 160), dtype=np.uint8))
