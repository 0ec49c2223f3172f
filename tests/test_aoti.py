"""AOTInductor artifacts (cls here, seg in test_aoti_seg.py: one compile per module, each over a minute on 2 cores)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine import Predictor
from engine.artifacts import open_artifact
from engine.errors import BackendError, InputError, PackageError
from engine.export.build import build_artifact
from engine.export.manifest import DIGEST_KEY, MANIFEST, BatchRange, manifest_digest
from tests.artifact_helpers import small_package
from tests.helpers import random_images
from tests.tolerances import RELATIVE, assert_relative


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("aoti")
    reference = small_package(workdir / "cls.htpkg", "openai-clip-vit-b16", "cls", "spectral", size=64)
    built = build_artifact(workdir / "cls.htpkg", "aoti", "fp32", BatchRange(1, 2, 8), workdir / "cls-aoti")
    artifact = open_artifact(built)
    return reference, artifact


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
def test_cls_matches_reference(built, batch):
    reference, artifact = built
    predictor = Predictor.load(artifact.directory, backend="aoti")
    x = random_images(batch, 64, seed=30 + batch)
    with torch.no_grad():
        expected = reference(x)
    assert_relative(predictor.forward(x), expected, RELATIVE[torch.float32], f"aoti cls batch {batch}")
    assert_relative(torch.from_numpy(predictor.forward(x.numpy())), expected, RELATIVE[torch.float32], "numpy in")


@pytest.mark.slow
def test_manifest_and_batch_limit(built):
    _, artifact = built
    assert artifact.manifest["backend"] == "aoti" and artifact.manifest["aoti"] == {"device_type": "cpu"}
    assert artifact.model_file.suffix == ".pt2"
    predictor = Predictor.load(artifact.directory)
    with pytest.raises(InputError, match="maximum batch 8"):
        predictor.forward(random_images(9, 64))


@pytest.mark.slow
def test_refuses_a_package_compiled_for_another_device(built, tmp_path):
    _, artifact = built
    target = tmp_path / "copy"
    shutil.copytree(artifact.directory, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["aoti"]["device_type"] = "cuda"
    manifest[DIGEST_KEY] = manifest_digest(manifest)  # as the engine would have written it for a CUDA package
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="compiled for 'cuda'"):
        Predictor.load(target, backend="aoti")
    with pytest.raises(PackageError, match="'aoti' artifact; it cannot run on backend 'onnx'"):
        Predictor.load(target, backend="onnx")


def test_refuses_unsupported_precision(tmp_path):
    small_package(tmp_path / "m.htpkg", "biomedclip-vit-b16", "seg", size=48)
    with pytest.raises(BackendError, match="backend 'aoti' builds precisions \\('fp32',\\) on 'cpu'"):
        build_artifact(tmp_path / "m.htpkg", "aoti", "fp16", BatchRange(1, 1, 2), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.htpkg"]


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_package_matches_reference(tmp_path, precision):
    reference = small_package(tmp_path / "m.htpkg", "biomedclip-vit-b16", "seg", "spectral", size=64)
    built = build_artifact(tmp_path / "m.htpkg", "aoti", precision, BatchRange(1, 2, 4), tmp_path / "out", device="cuda")
    artifact = open_artifact(built)
    assert artifact.manifest["aoti"] == {"device_type": "cuda"}
    predictor = Predictor.load(artifact.directory, device="cuda", precision=precision)
    x = random_images(4, 64, seed=80)
    with torch.no_grad():
        expected = reference(x)
    tolerance = RELATIVE[torch.float32 if precision == "fp32" else torch.float16]
    assert_relative(predictor.forward(x.cuda()).cpu(), expected, tolerance, f"aoti cuda {precision}")
