"""The frame path: uint8 frame in, mask out. Pillow's own resize for the preprocessing, masks straight from the
head's grid logits through one composed upsample matrix per axis, equal to the reference's two-step result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import Predictor
from engine.postprocess import bilinear_matrix, composed_upsample_matrix, mask_from_maps, results_from_logits
from engine.preprocess import preprocess_frames, resize_like_pil, to_gray

from .helpers import FRAMES, frame_packages
from .helpers import seeded_frame as _frame


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    return frame_packages(tmp_path_factory.mktemp("frames"))


@pytest.mark.parametrize("shape,rgb", FRAMES)
def test_preprocessing_is_pillows_resize(shape, rgb):
    frame = _frame(shape, rgb, seed=sum(shape))
    batch = preprocess_frames([frame], {"grayscale": True, "resize": "pil_bicubic", "size": 224, "scale": 1 / 255,
                                        "mean": None, "std": None, "channels": 3})
    expected = resize_like_pil(to_gray(frame), 224, 224).astype(np.float32) * np.float32(1 / 255)
    np.testing.assert_array_equal(batch[0, 0], expected)
    np.testing.assert_array_equal(batch[0, 2], expected)


@pytest.mark.parametrize("height,width", [(480, 640), (1, 1), (7, 3), (300, 257)])
@pytest.mark.parametrize("classes", [2, 3])
def test_composed_upsample_equals_the_two_steps_but_for_ties(height, width, classes):
    logits = torch.randn(classes, 14, 14, generator=torch.Generator().manual_seed(height + classes))
    two_step = F.interpolate(F.interpolate(logits[None], size=(224, 224), mode="bilinear", align_corners=False),
                             size=(height, width), mode="bilinear", align_corners=False)[0]
    expected = two_step.argmax(0).numpy()
    rows, cols = composed_upsample_matrix(14, 224, height), composed_upsample_matrix(14, 224, width)
    np.testing.assert_allclose(rows, bilinear_matrix(224, height).astype(np.float64) @ bilinear_matrix(14, 224),
                               rtol=0, atol=1e-6)
    mask = mask_from_maps(logits.numpy(), rows, cols)
    assert mask.dtype == np.uint8 and mask.shape == (height, width)
    top2 = two_step.topk(2, dim=0).values
    ties = (top2[0] - top2[1]).numpy() < 1e-5
    assert np.array_equal(mask[~ties], expected[~ties])


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("task", ["seg", "seg3"])
def test_optimized_predict_equals_the_reference(packages, task, batch):
    reference = Predictor.load(packages[task], backend="reference")
    optimized = Predictor.load(packages[task], backend="optimized")
    assert optimized.runner.run_grid is not None
    for index, (shape, rgb) in enumerate(FRAMES):
        frames = [_frame(shape, rgb, seed=index * 10 + k) for k in range(batch)]
        expected = reference.predict(frames)
        actual = optimized.predict(frames)
        for want, got in zip(expected, actual):
            assert got.mask.shape == shape and got.mask.dtype == np.uint8
            agreement = float((want.mask == got.mask).mean())
            assert agreement >= 0.999, f"{shape}: {agreement:.5f} of pixels agree"


def test_cls_probabilities_match_the_reference(packages):
    frames = [_frame(shape, rgb, seed=3) for shape, rgb in FRAMES]
    expected = Predictor.load(packages["cls"], backend="reference").predict(frames)
    actual = Predictor.load(packages["cls"], backend="optimized").predict(frames)
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=0, atol=1e-5)


def test_grid_logits_upsample_to_the_forward_logits(packages):
    predictor = Predictor.load(packages["seg3"], backend="optimized")
    batch = predictor.preprocess([_frame((120, 90), False, seed=5), _frame((64, 200), True, seed=6)])
    grid = predictor._run_grid(batch)
    full = predictor.forward(batch)
    size = predictor.image_size
    upsampled = F.interpolate(torch.from_numpy(grid), size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled, torch.from_numpy(full), rtol=0, atol=1e-5)
    sizes = [(120, 90), (64, 200)]
    via_grid = results_from_logits("seg", grid, sizes, predictor.classes, image_size=size)
    via_full = results_from_logits("seg", full, sizes, predictor.classes)
    for a, b in zip(via_grid, via_full):
        assert (a.mask == b.mask).mean() >= 0.999


@pytest.mark.parametrize("height,width", [(480, 640), (1, 1), (7, 3), (300, 257)])
@pytest.mark.parametrize("classes", [2, 3])
def test_probability_maps_are_the_softmax_of_the_two_step_upsample(height, width, classes):
    logits = torch.randn(2, classes, 14, 14, generator=torch.Generator().manual_seed(height * width + classes)) * 4
    two_step = F.interpolate(F.interpolate(logits, size=(224, 224), mode="bilinear", align_corners=False),
                             size=(height, width), mode="bilinear", align_corners=False)
    expected = torch.softmax(two_step.double(), dim=1).numpy()
    sizes = [(height, width)] * 2
    plain = results_from_logits("seg", logits.numpy(), sizes, [f"c{i}" for i in range(classes)], image_size=224)
    kept = results_from_logits("seg", logits.numpy(), sizes, [f"c{i}" for i in range(classes)], image_size=224,
                               probability_maps=True)
    for without, result, want in zip(plain, kept, expected):
        assert without.probability_maps is None
        np.testing.assert_array_equal(result.mask, without.mask)  # asking for the maps leaves the masks alone
        assert result.probability_maps.dtype == np.float32
        assert result.probability_maps.shape == (classes, height, width)
        np.testing.assert_allclose(result.probability_maps, want, rtol=0, atol=1e-6)


def test_probability_maps_on_the_grid_path_equal_the_reference(packages):
    frames = [_frame((120, 90), False, seed=5), _frame((64, 200), True, seed=6)]
    reference = Predictor.load(packages["seg3"], backend="reference").with_probability_maps()
    optimized = Predictor.load(packages["seg3"], backend="optimized").with_probability_maps()
    assert (reference.frame_path, optimized.frame_path) == ("logits", "grid")
    for want, got in zip(reference.predict(frames), optimized.predict(frames)):
        np.testing.assert_allclose(got.probability_maps, want.probability_maps, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.probability_maps.sum(axis=0), 1.0, rtol=0, atol=1e-6)
        assert (np.argmax(got.probability_maps, axis=0) == got.mask).mean() >= 0.999


def test_probability_maps_take_the_host_path_and_leave_the_predictor_alone(packages):
    from engine.runner import Runner

    predictor = Predictor.load(packages["seg"], backend="optimized")
    fused = Runner(run=predictor.runner.run, uses_torch=True, device="cpu", precision="fp32",
                   run_grid=predictor.runner.run_grid, run_frames=lambda frames: pytest.fail("masks-only path taken"))
    fused_predictor = Predictor(fused, task="seg", classes=predictor.classes, preprocessing=predictor.preprocessing,
                                image_size=predictor.image_size, backend="optimized", source=predictor.source)
    view = fused_predictor.with_probability_maps()
    assert (fused_predictor.frame_path, view.frame_path) == ("frames", "grid")
    assert view.runner is fused_predictor.runner and not fused_predictor.probability_maps
    frame = _frame((45, 70), False, seed=9)
    (result,) = view.predict([frame])
    (expected,) = predictor.predict([frame])
    np.testing.assert_array_equal(result.mask, expected.mask)
    assert result.probability_maps.shape == (2, 45, 70)
