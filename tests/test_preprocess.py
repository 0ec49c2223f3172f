"""Frame preprocessing against Pillow, and the numpy bilinear upsampling against `F.interpolate`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.config import AUTHORS_PREPROCESSING
from engine.errors import InputError
from engine.postprocess import upsample_logits
from engine.preprocess import check_frame, preprocess_frames, resize_like_pil, to_gray

SIZES = [(480, 640), (37, 53), (224, 224), (600, 301), (17, 1000), (225, 223), (1080, 1920)]


@pytest.mark.parametrize("height,width", SIZES)
def test_resize_matches_pillow(height, width):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((224, 224))).astype(np.int16)
    actual = resize_like_pil(image, 224, 224).astype(np.int16)
    assert np.abs(actual - expected).max() <= 1


@pytest.mark.parametrize("out_h,out_w", [(7, 300), (301, 99)])
def test_resize_to_non_square_matches_pillow(out_h, out_w):
    image = np.random.default_rng(out_h).integers(0, 256, (123, 157), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((out_w, out_h))).astype(np.int16)
    assert np.abs(resize_like_pil(image, out_h, out_w).astype(np.int16) - expected).max() <= 1


def test_rgb_to_gray_matches_pillow():
    rgb = np.random.default_rng(0).integers(0, 256, (61, 47, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(to_gray(rgb), expected)


def test_preprocess_matches_authors_pipeline():
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), rng.integers(0, 256, (90, 70), dtype=np.uint8)]
    batch = preprocess_frames(frames, AUTHORS_PREPROCESSING)
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    for frame, planes in zip(frames, batch):
        gray = Image.fromarray(frame).convert("L").resize((224, 224))
        expected = np.asarray(gray).astype(np.float32) / 255.0
        assert np.abs(planes - expected[None]).max() <= 1.0 / 255.0 + 1e-7
        assert np.array_equal(planes[0], planes[2])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10), dtype=np.float32), "expected uint8"),
    (np.zeros((10, 10, 4), dtype=np.uint8), "expected a HxW"),
    (np.zeros((0, 10), dtype=np.uint8), "empty frame"),
    (np.zeros((2, 3, 4, 5), dtype=np.uint8), "expected a HxW"),
])
def test_bad_frames_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        check_frame(bad)


@pytest.mark.parametrize("height,width", [(480, 640), (100, 37), (224, 224), (13, 300)])
def test_logit_upsampling_matches_interpolate(height, width):
    logits = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(height))
    expected = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    actual = torch.from_numpy(upsample_logits(logits.numpy(), height, width))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_resize_matches_pillow_on_random_shapes():
    rng = np.random.default_rng(42)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(8, 700, size=2))
        out_h, out_w = (int(v) for v in rng.integers(8, 300, size=2))
        image = rng.integers(0, 256, (height, width), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h))).astype(np.int16)
        actual = resize_like_pil(image, out_h, out_w).astype(np.int16)
        assert np.abs(actual - expected).max() <= 1, (height, width, out_h, out_w)
