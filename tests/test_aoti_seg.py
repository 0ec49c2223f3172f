"""AOTInductor artifact of a seg model (its own module: one compile per module)."""

from __future__ import annotations

import pytest
import torch

from engine import Predictor
from engine.artifacts import open_artifact
from engine.export.build import build_artifact
from engine.export.manifest import BatchRange
from tests.artifact_helpers import small_package
from tests.helpers import random_images
from tests.tolerances import RELATIVE, assert_relative


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("aoti-seg")
    reference = small_package(workdir / "seg.htpkg", "biomedclip-vit-b16", "seg", size=48)
    built = build_artifact(workdir / "seg.htpkg", "aoti", "fp32", BatchRange(1, 4, 4), workdir / "seg-aoti")
    artifact = open_artifact(built)
    return reference, artifact


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
def test_seg_matches_reference(built, batch):
    reference, artifact = built
    predictor = Predictor.load(artifact.directory)
    assert predictor.backend == "aoti"
    x = random_images(batch, 48, seed=40 + batch)
    with torch.no_grad():
        expected = reference(x)
    assert_relative(predictor.forward(x), expected, RELATIVE[torch.float32], f"aoti seg batch {batch}")
