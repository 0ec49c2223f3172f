"""The frame path on the model's device (engine.optimize.frames): the device postprocess and preprocess against the
host ones (engine.postprocess, engine.preprocess), the pipeline's orchestration on CPU with the torch provider, and
on a GPU `Predictor.predict` of the optimized backend (graphs, pinned staging) against the CPU reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Predictor
from engine.errors import InputError
from engine.optimize.frames import FramePipeline, masks_from_grid, probabilities
from engine.optimize.model import OptimizedHTModel
from engine.postprocess import composed_upsample_matrix, mask_from_maps, results_from_logits, softmax
from engine.preprocess import preprocess_frames

from .helpers import FRAMES, frame_packages, small_config, small_tensors
from .helpers import seeded_frame as _frame

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
# Float rounding of the per-axis sums may differ between numpy and torch: a pixel whose top two upsampled logits
# lie closer than this (computed in float64) may take either class; every other pixel must agree.
TIE = 1e-5


def _ties(logits: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`[B,H,W]` bool: where the two best classes of the float64 upsampled logits are within TIE."""
    maps = np.einsum("hi,bcij,wj->bchw", rows.astype(np.float64), logits.astype(np.float64), cols.astype(np.float64))
    top2 = np.sort(maps, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < TIE


@pytest.mark.parametrize("height,width", [(480, 640), (1, 1), (7, 3), (300, 257)])
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_device_masks_equal_the_host_masks_but_for_ties(height, width, classes, batch):
    grid = 7
    logits = torch.randn(batch, classes, grid, grid, generator=torch.Generator().manual_seed(height * classes + batch))
    rows, cols = composed_upsample_matrix(grid, 112, height), composed_upsample_matrix(grid, 112, width)
    masks = masks_from_grid(logits, torch.from_numpy(np.array(rows)), torch.from_numpy(np.array(cols)))
    assert masks.dtype == torch.uint8 and masks.shape == (batch, height, width)
    expected = np.stack([mask_from_maps(one, rows, cols) for one in logits.numpy()])
    ties = _ties(logits.numpy(), rows, cols)
    assert np.array_equal(masks.numpy()[~ties], expected[~ties])


def test_device_probabilities_equal_the_host_softmax():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2)) * 8
    expected = softmax(logits.numpy().astype(np.float64)).astype(np.float32)
    result = probabilities(logits)
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-6)


def _pipeline(task: str, classes: int, **pre) -> FramePipeline:
    cfg = small_config("biomedclip-vit-b16", task, num_classes=classes)
    cfg.preprocessing.update(pre)
    return FramePipeline(OptimizedHTModel(cfg, small_tensors(cfg, seed=7)).eval(), "cpu")


@pytest.mark.parametrize("shape,rgb", FRAMES)
@pytest.mark.parametrize("normalized", [False, True])
def test_device_preprocessing_is_pillows(shape, rgb, normalized):
    pre = {"mean": 0.45, "std": 0.27} if normalized else {}
    pipeline = _pipeline("seg", 2, **pre)
    frames = [_frame(shape, rgb, seed=k + sum(shape)) for k in range(2)]
    # A non-contiguous view of the second frame: the pipeline takes any strides.
    frames[1] = np.ascontiguousarray(np.flip(frames[1], axis=1))[:, ::-1]
    expected = preprocess_frames(frames, pipeline.model.cfg.preprocessing)
    images = pipeline.images(torch.from_numpy(np.stack(frames)))
    assert images.dtype == torch.float32
    np.testing.assert_array_equal(images.numpy(), expected)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("batch", [1, 4])
def test_pipeline_masks_equal_the_host_frame_path(classes, batch):
    pipeline = _pipeline("seg", classes)
    cfg = pipeline.model.cfg
    for index, (shape, rgb) in enumerate(FRAMES):
        frames = [_frame(shape, rgb, seed=index * 10 + k) for k in range(batch)]
        with torch.inference_mode():
            grid = pipeline.model(torch.from_numpy(preprocess_frames(frames, cfg.preprocessing)), grid=True).numpy()
        expected = results_from_logits("seg", grid, [shape] * batch, cfg.classes, image_size=cfg.image_size)
        masks = pipeline(frames)
        assert masks.dtype == np.uint8 and masks.shape == (batch, *shape)
        rows = composed_upsample_matrix(grid.shape[2], cfg.image_size, shape[0])
        cols = composed_upsample_matrix(grid.shape[3], cfg.image_size, shape[1])
        ties = _ties(grid, rows, cols)
        want = np.stack([result.mask for result in expected])
        assert np.array_equal(masks[~ties], want[~ties]), f"{shape}"


def test_pipeline_probabilities_equal_the_host_frame_path():
    pipeline = _pipeline("cls", 3)
    cfg = pipeline.model.cfg
    frames = [_frame((120, 90), True, seed=k) for k in range(3)]
    with torch.inference_mode():
        logits = pipeline.model(torch.from_numpy(preprocess_frames(frames, cfg.preprocessing))).numpy()
    expected = np.stack([r.probabilities for r in results_from_logits("cls", logits, [(120, 90)] * 3, cfg.classes)])
    result = pipeline(frames)
    assert result.dtype == np.float32 and result.shape == (3, 3)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def test_pipeline_reuses_its_staging_buffers_and_returns_copies():
    pipeline = _pipeline("seg", 2)
    first = [_frame((64, 80), False, seed=1), _frame((64, 80), False, seed=2)]
    second = [_frame((64, 80), False, seed=3), _frame((64, 80), False, seed=4)]
    masks_first = pipeline(first)
    kept = masks_first.copy()
    buffers = pipeline._staging[(2, 64, 80)]
    pipeline(second)
    assert list(pipeline._staging) == [(2, 64, 80)] and pipeline._staging[(2, 64, 80)] is buffers
    np.testing.assert_array_equal(masks_first, kept)
    pipeline([_frame((64, 80), True, seed=5)])
    assert set(pipeline._staging) == {(2, 64, 80), (1, 64, 80, 3)}
    assert list(pipeline._weights) == [(64, 80)] and list(pipeline._upsample) == [(64, 80)]


def test_pipeline_refuses_mixed_empty_and_non_uint8_frames():
    pipeline = _pipeline("seg", 2)
    with pytest.raises(InputError, match="one shape"):
        pipeline([_frame((30, 40), False, seed=1), _frame((40, 30), False, seed=2)])
    with pytest.raises(InputError, match="at least one"):
        pipeline([])
    with pytest.raises(InputError, match="uint8"):
        pipeline([np.zeros((30, 40), dtype=np.float32)])


@pytest.mark.parametrize("task,classes", [("seg", 2), ("seg", 3), ("cls", 3)])
@pytest.mark.parametrize("batch", [1, 3])
def test_device_frames_give_what_host_frames_give(task, classes, batch):
    pipeline = _pipeline(task, classes)
    shapes = [((45, 70), False), ((33, 20), True), ((7, 3), True)]
    batches = [[_frame(shape, rgb, seed=index * 10 + k) for k in range(batch)]
               for index, (shape, rgb) in enumerate(shapes)]
    expected = [pipeline(frames) for frames in batches]
    staged = list(pipeline._staging)
    for frames, want in zip(batches, expected):
        stacked = torch.from_numpy(np.stack(frames))
        outputs = pipeline.run_device(stacked)
        assert isinstance(outputs, torch.Tensor) and outputs.device == stacked.device
        np.testing.assert_array_equal(outputs.numpy(), want)
        # A non-contiguous view (every other column of a wider buffer) is read in place, like a strided tensor.
        wide = torch.from_numpy(np.repeat(np.stack(frames), 2, axis=2))
        np.testing.assert_array_equal(pipeline.run_device(wide[:, :, ::2]).numpy(), want)
    assert list(pipeline._staging) == staged  # the device frames made no host staging buffer


def test_device_frames_are_checked():
    pipeline = _pipeline("seg", 2)
    with pytest.raises(InputError, match="uint8 torch tensor"):
        pipeline.run_device(torch.zeros(1, 30, 40))
    with pytest.raises(InputError, match="uint8 torch tensor"):
        pipeline.run_device(torch.zeros(1, 30, 40, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match="uint8 torch tensor"):
        pipeline.run_device(np.zeros((1, 30, 40), dtype=np.uint8))
    with pytest.raises(InputError, match="are on meta, but this frame path runs on cpu"):
        pipeline.run_device(torch.empty(1, 30, 40, dtype=torch.uint8, device="meta"))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    return frame_packages(tmp_path_factory.mktemp("cudaframes"))


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("task", ["seg", "seg3"])
@pytest.mark.requires_cuda
@cuda_only
def test_cuda_predict_equals_the_cpu_reference(packages, task, batch):
    reference = Predictor.load(packages[task], backend="reference")
    optimized = Predictor.load(packages[task], backend="optimized", device="cuda")
    assert optimized.runner.run_frames is not None and optimized.runner.run_grid is not None
    for index, (shape, rgb) in enumerate(FRAMES):
        frames = [_frame(shape, rgb, seed=index * 10 + k) for k in range(batch)]
        expected = reference.predict(frames)
        for _ in range(2):  # the capture, then a replay of the same graph
            actual = optimized.predict(frames)
            for want, got in zip(expected, actual):
                assert got.mask.shape == shape and got.mask.dtype == np.uint8
                agreement = float((want.mask == got.mask).mean())
                assert agreement >= 0.999, f"{shape}: {agreement:.5f} of pixels agree"
    graphs = optimized.runner.run.graphs
    assert sum(1 for key in graphs if key[0] == "frames") == len(FRAMES)
    staging = optimized.runner.run_frames._staging
    assert all(frames.is_pinned() and out.is_pinned() for frames, out in staging.values())


@pytest.mark.requires_cuda
@cuda_only
def test_cuda_predict_probabilities_equal_the_cpu_reference(packages):
    frames = [_frame(shape, rgb, seed=3) for shape, rgb in FRAMES]
    expected = Predictor.load(packages["cls"], backend="reference").predict(frames)
    actual = Predictor.load(packages["cls"], backend="optimized", device="cuda").predict(frames)
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=0, atol=1e-5)


@pytest.mark.requires_cuda
@cuda_only
def test_cuda_forward_keeps_its_contract_next_to_the_frame_path(packages):
    predictor = Predictor.load(packages["seg3"], backend="optimized", device="cuda")
    batch = predictor.preprocess([_frame((120, 90), False, seed=5), _frame((64, 200), True, seed=6)])
    before = predictor.forward(batch)
    predictor.predict([_frame((120, 90), False, seed=5)])
    after = predictor.forward(batch)
    assert tuple(after.shape) == (2, 3, 112, 112)
    torch.testing.assert_close(torch.as_tensor(after), torch.as_tensor(before), rtol=0, atol=0)


def test_a_cpu_predictor_never_takes_device_frames(packages):
    from engine.errors import BackendError

    for backend in ("reference", "optimized"):
        predictor = Predictor.load(packages["seg"], backend=backend)
        assert predictor.runner.run_device_frames is None and not predictor.takes_device_frames
        with pytest.raises(BackendError, match="takes host frames only"):
            predictor.infer_device_frames(torch.zeros(1, 30, 40, dtype=torch.uint8))


@pytest.mark.parametrize("task", ["seg", "seg3"])
@pytest.mark.requires_cuda
@cuda_only
def test_cuda_device_frames_equal_host_frames(packages, task):
    predictor = Predictor.load(packages[task], backend="optimized", device="cuda")
    assert predictor.takes_device_frames and not predictor.with_probability_maps().takes_device_frames
    for index, (shape, rgb) in enumerate(FRAMES):
        frames = [_frame(shape, rgb, seed=index * 10 + k) for k in range(2)]
        expected = predictor.predict(frames, batch_size=2)
        device_frames = torch.from_numpy(np.stack(frames)).cuda()
        outputs = predictor.infer_device_frames(device_frames)
        assert outputs.device == device_frames.device and outputs.dtype == torch.uint8
        for want, got in zip(expected, predictor.results(outputs.cpu().numpy(), [shape] * 2)):
            np.testing.assert_array_equal(got.mask, want.mask)  # the same graph, fed on the device
