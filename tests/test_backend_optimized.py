"""`Predictor.load(..., backend="optimized")` on CPU: registration, precisions, errors."""

import pytest
import torch

from engine import Predictor, available_backends
from engine.errors import BackendError
from engine.package import save_package

from .helpers import random_images, small_config, small_tensors
from .tolerances import RELATIVE, assert_relative


@pytest.fixture(scope="module")
def seg_package(tmp_path_factory):
    cfg = small_config("biomedclip-vit-b16", "seg", "spectral")
    path = tmp_path_factory.mktemp("pkg") / "seg.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=21))
    return path


def test_optimized_is_registered_on_cpu():
    assert "optimized" in available_backends("cpu")


def test_optimized_fp32_predictor_equals_reference(seg_package):
    images = random_images(3, 112, seed=22)
    expected = Predictor.load(seg_package, backend="reference").forward(images)
    predictor = Predictor.load(seg_package, backend="optimized", precision="fp32")
    assert_relative(predictor.forward(images), expected, RELATIVE[torch.float32], "optimized fp32 predictor")
    assert_relative(torch.from_numpy(predictor.forward(images.numpy())), expected, RELATIVE[torch.float32], "numpy")


def test_optimized_rejects_unknown_precision(seg_package):
    with pytest.raises(BackendError, match="precision 'fp8'"):
        Predictor.load(seg_package, backend="optimized", precision="fp8")
