"""`Predictor` with the reference backend: forward, predict, bad inputs, backend discovery."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import BackendError, InputError, PackageError, Predictor, available_backends
from engine.model import build_reference_model
from engine.package import save_package
from engine.synthetic import synthetic_frame

from .helpers import small_config, small_tensors


@pytest.fixture(scope="module")
def seg_package(tmp_path_factory):
    cfg = small_config("biomedclip-vit-b16", "seg", image_size=224, width=32, heads=2, layers=4)
    tensors = small_tensors(cfg, seed=3)
    path = tmp_path_factory.mktemp("pkg") / "seg.htpkg"
    save_package(path, cfg, tensors)
    return path, cfg, tensors


@pytest.fixture(scope="module")
def cls_package(tmp_path_factory):
    cfg = small_config("openai-clip-vit-b16", "cls", num_classes=4)
    tensors = small_tensors(cfg, seed=4)
    path = tmp_path_factory.mktemp("pkg") / "cls.htpkg"
    save_package(path, cfg, tensors)
    return path, cfg, tensors


def test_forward_torch_and_numpy(seg_package):
    path, cfg, tensors = seg_package
    predictor = Predictor.load(path)
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = build_reference_model(cfg, tensors)(images)
    out_torch = predictor.forward(images)
    out_numpy = predictor.forward(images.numpy())
    assert isinstance(out_torch, torch.Tensor) and isinstance(out_numpy, np.ndarray)
    assert out_torch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out_torch, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(out_numpy, expected.numpy())


def test_forward_accepts_non_contiguous_input(cls_package):
    path, *_ = cls_package
    predictor = Predictor.load(path)
    images = torch.rand(3, 112, 112, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(predictor.forward(images), predictor.forward(images.contiguous()), rtol=0, atol=0)


def test_predict_seg_masks_at_frame_size(seg_package):
    path, cfg, tensors = seg_package
    predictor = Predictor.load(path)
    gray, _ = synthetic_frame(300, 411, seed=2)
    rgb = np.stack([synthetic_frame(97, 150, seed=3)[0]] * 3, axis=-1)
    results = predictor.predict([gray, rgb])
    assert [r.mask.shape for r in results] == [(300, 411), (97, 150)]
    batch = torch.from_numpy(predictor.preprocess([gray]))
    with torch.no_grad():
        logits = build_reference_model(cfg, tensors)(batch)
    expected = F.interpolate(logits, size=(300, 411), mode="bilinear", align_corners=False).argmax(1)[0]
    np.testing.assert_array_equal(results[0].mask, expected.numpy().astype(np.uint8))
    assert set(results[0].summary()["class_fractions"]) == set(cfg.classes)


def test_predict_single_frame_and_stack(seg_package):
    path, *_ = seg_package
    predictor = Predictor.load(path)
    frame, _ = synthetic_frame(64, 80, seed=5)
    single = predictor.predict(frame)
    stacked = predictor.predict(np.stack([frame, frame]), batch_size=1)
    assert len(single) == 1 and len(stacked) == 2
    np.testing.assert_array_equal(single[0].mask, stacked[1].mask)


def test_predict_cls_probabilities(cls_package):
    path, cfg, _ = cls_package
    predictor = Predictor.load(path)
    results = predictor.predict([synthetic_frame(120, 160, seed=k)[0] for k in range(3)], batch_size=2)
    assert len(results) == 3
    for result in results:
        assert result.probabilities.shape == (4,)
        assert abs(float(result.probabilities.sum()) - 1.0) < 1e-5
        assert result.label in cfg.classes


@pytest.mark.parametrize("bad,match", [
    (torch.rand(1, 3, 100, 100), r"shape \[B,3,224,224\]"),
    (torch.rand(3, 224, 224), r"shape \[B,3,224,224\]"),
    (torch.rand(1, 3, 224, 224).double(), "float32"),
    (np.zeros((1, 3, 224, 224), dtype=np.uint8), "float32"),
    (torch.full((1, 3, 224, 224), float("nan")), "NaN"),
    ([[1.0]], "torch tensor or numpy array"),
])
def test_forward_bad_input(seg_package, bad, match):
    predictor = Predictor.load(seg_package[0])
    with pytest.raises(InputError, match=match):
        predictor.forward(bad)


def test_predict_bad_frame(seg_package):
    predictor = Predictor.load(seg_package[0])
    with pytest.raises(InputError, match="frame 1: expected uint8"):
        predictor.predict([np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.float32)])


def test_load_errors(tmp_path, seg_package):
    with pytest.raises(PackageError, match="does not exist"):
        Predictor.load(tmp_path / "missing.htpkg")
    with pytest.raises(BackendError, match="unknown backend 'fastest'"):
        Predictor.load(seg_package[0], backend="fastest")
    with pytest.raises(BackendError, match="precision 'bf16'"):
        Predictor.load(seg_package[0], precision="bf16")
    with pytest.raises(PackageError, match="without manifest.json"):
        Predictor.load(tmp_path)


def test_available_backends():
    assert "reference" in available_backends("cpu")
    if not torch.cuda.is_available():
        assert available_backends("cuda") == []
