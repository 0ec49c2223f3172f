"""The host frame resize (`engine.preprocess.gray_resize`: the C extension `engine._frame_resize`, csrc/cpu/, where
it is built) byte for byte against Pillow itself; its argument checks; each of its code paths (AVX-512, AVX2, SSE2,
plain C) built and checked on this machine; and the Pillow fallback without it."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import preprocess
from engine.cpuinfo import cpu_flags
from engine.errors import InputError
from engine.preprocess import gray_resize, pil_resize_taps, preprocess_frames
from htkernels.pillow import vertical_pass_first

try:
    from engine import _frame_resize
except ImportError:
    _frame_resize = None

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "cpu" / "frame_resize.c"
native = pytest.mark.skipif(_frame_resize is None,
                            reason="engine._frame_resize is not built (HTK_SKIP_CUDA_BUILD=1 python setup.py build_ext "
                                   "--inplace builds it)")
# Frame sizes: HD and VGA, odd and tiny ones, identity, upscales, and tall frames (Pillow's vertical pass first).
FRAME_SIZES = [(1080, 1920), (480, 640), (600, 800), (1, 1), (7, 3), (3, 7), (224, 224), (100, 50), (4000, 300),
               (225, 223), (17, 1000), (1001, 37)]


def pillow_gray(frame: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    image = Image.fromarray(frame)
    if frame.ndim == 3:
        image = image.convert("L")
    return np.asarray(image.resize((out_w, out_h), Image.Resampling.BICUBIC))


def random_frame(rng, height: int, width: int, rgb: bool, binary: bool = False) -> np.ndarray:
    """Uniform noise; or black and white pixels (`binary`), whose bicubic overshoot drives the clamps to 0 and 255."""
    shape = (height, width, 3) if rgb else (height, width)
    if binary:
        return (rng.integers(0, 2, shape, dtype=np.uint8) * np.uint8(255)).astype(np.uint8)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def native_resize(module, frame: np.ndarray, out_h: int, out_w: int, poison: int) -> np.ndarray:
    """`module.gray_resize` into an output filled with `poison` (run with two values, an unwritten pixel fails)."""
    height, width = frame.shape[:2]
    out = np.full((out_h, out_w), poison, dtype=np.uint8)
    module.gray_resize(frame, out, pil_resize_taps(height, out_h) if height != out_h else None,
                       pil_resize_taps(width, out_w) if width != out_w else None,
                       vertical_pass_first(height, width, out_h, out_w))
    return out


def assert_module_matches_pillow(module, frame: np.ndarray, out_h: int, out_w: int):
    expected = pillow_gray(frame, out_h, out_w)
    for poison in (0, 255):
        np.testing.assert_array_equal(native_resize(module, frame, out_h, out_w, poison), expected,
                                      err_msg=f"{frame.shape} -> {out_h}x{out_w}")


def test_the_sizes_cover_both_pass_orders():
    assert vertical_pass_first(4000, 300, 224, 224) and vertical_pass_first(1001, 37, 224, 224)
    assert not vertical_pass_first(1080, 1920, 224, 224)


@native
@pytest.mark.parametrize("binary", [False, True], ids=["noise", "binary"])
@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
@pytest.mark.parametrize("height,width", FRAME_SIZES)
def test_matches_pillow(height, width, rgb, binary):
    frame = random_frame(np.random.default_rng(height * 7919 + width), height, width, rgb, binary)
    np.testing.assert_array_equal(gray_resize(frame, 224, 224), pillow_gray(frame, 224, 224))
    assert_module_matches_pillow(_frame_resize, frame, 224, 224)


@native
@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
@pytest.mark.parametrize("out_h,out_w", [(7, 300), (301, 99), (224, 100), (1, 1), (123, 157), (2000, 33)])
def test_non_square_outputs_match_pillow(out_h, out_w, rgb):
    rng = np.random.default_rng(out_h * 31 + out_w)
    for height, width in ((123, 157), (1080, 1920), (50, 3000)):
        frame = random_frame(rng, height, width, rgb)
        np.testing.assert_array_equal(gray_resize(frame, out_h, out_w), pillow_gray(frame, out_h, out_w),
                                      err_msg=f"{frame.shape} -> {out_h}x{out_w}")


@native
def test_random_shapes_match_pillow():
    rng = np.random.default_rng(2024)
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(1, 900, size=2))
        out_h, out_w = (int(v) for v in rng.integers(1, 400, size=2))
        frame = random_frame(rng, height, width, bool(rng.integers(2)), bool(rng.integers(2)))
        np.testing.assert_array_equal(gray_resize(frame, out_h, out_w), pillow_gray(frame, out_h, out_w),
                                      err_msg=f"{frame.shape} -> {out_h}x{out_w}")


@native
def test_non_contiguous_frames_are_copied_by_gray_resize_and_refused_by_the_extension():
    rng = np.random.default_rng(3)
    gray, rgb = random_frame(rng, 480, 640, False), random_frame(rng, 480, 640, True)
    for view in (gray[::2, ::3], gray[:, 5:-7], gray.T, rgb[10:400:3, ::2], rgb[:, :, ::-1]):
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(gray_resize(view, 224, 224), pillow_gray(np.ascontiguousarray(view), 224, 224))
        with pytest.raises(ValueError, match="not C-contiguous"):  # numpy's buffer export says so
            native_resize(_frame_resize, view, 224, 224, 0)


@native
def test_threads_resize_in_parallel_with_the_same_results():
    rng = np.random.default_rng(11)
    frames = [random_frame(rng, 480 + 16 * index, 640 - 8 * index, index % 2 == 1) for index in range(8)]
    serial = [gray_resize(frame, 224, 224) for frame in frames]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda frame: gray_resize(frame, 224, 224), frames * 3))
    for index, result in enumerate(parallel):
        np.testing.assert_array_equal(result, serial[index % len(frames)])


@native
@pytest.mark.parametrize("mutate,error,match", [
    (lambda a: a.update(frame=np.zeros((8, 8, 4), np.uint8)), ValueError, "frame: expected"),
    (lambda a: a.update(frame=np.zeros((8, 8), np.float32)), ValueError, "frame: expected"),
    (lambda a: a.update(out=np.zeros((4, 4), np.int16)), ValueError, "out: expected"),
    (lambda a: a.update(out=np.zeros((4, 4), np.uint8)[::-1]), ValueError, "not C-contiguous"),
    (lambda a: a.update(rows=None), ValueError, "rows: None keeps the height"),
    (lambda a: a.update(cols=[1, 2, 3]), TypeError, "cols: expected None or a"),
    (lambda a: a.update(cols=tuple(t.astype(np.int64) for t in a["cols"])), ValueError, "int32"),
    (lambda a: a.update(cols=(a["cols"][0][:3], a["cols"][1], a["cols"][2])), ValueError, "tables of 4 outputs"),
    (lambda a: a.update(rows=(a["rows"][0] + 5, a["rows"][1], a["rows"][2])), ValueError, "reads inputs"),
    (lambda a: a.update(rows=(a["rows"][0], a["rows"][1] + 50, a["rows"][2])), ValueError, "reads inputs"),
    (lambda a: a.update(cols=(a["cols"][0], a["cols"][1], a["cols"][2] * 4)), ValueError, "total magnitude"),
])
def test_the_extension_checks_its_arguments(mutate, error, match):
    arguments = {"frame": random_frame(np.random.default_rng(1), 8, 8, False), "out": np.zeros((4, 4), np.uint8),
                 "rows": pil_resize_taps(8, 4), "cols": pil_resize_taps(8, 4), "vertical_first": False}
    mutate(arguments)
    with pytest.raises(error, match=match):
        _frame_resize.gray_resize(*arguments.values())


@native
def test_the_extension_refuses_an_output_that_overlaps_the_frame():
    frame = random_frame(np.random.default_rng(1), 8, 8, False)
    inside = frame.reshape(-1)[:32].reshape(8, 4)
    with pytest.raises(ValueError, match="shares memory"):
        _frame_resize.gray_resize(frame, inside, None, pil_resize_taps(8, 4), False)


def test_without_the_extension_gray_resize_is_pillow(monkeypatch):
    rng = np.random.default_rng(8)
    frames = [random_frame(rng, 480, 640, False), random_frame(rng, 1080, 1920, True),
              random_frame(rng, 4000, 300, True), random_frame(rng, 224, 224, False)]
    native_results = [gray_resize(frame, 224, 224) for frame in frames]
    monkeypatch.setattr(preprocess, "_native_gray_resize", None)
    assert not preprocess.native_resize_available()
    for frame, native_result in zip(frames, native_results):
        fallback = gray_resize(frame, 224, 224)
        np.testing.assert_array_equal(fallback, pillow_gray(frame, 224, 224))
        np.testing.assert_array_equal(fallback, native_result)
        np.testing.assert_array_equal(preprocess.pil_gray_resize(frame[:, ::2], 224),
                                      pillow_gray(np.ascontiguousarray(frame[:, ::2]), 224, 224))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10), dtype=np.float32), "expected uint8"),
    (np.zeros((10, 10, 4), dtype=np.uint8), "expected a HxW"),
    (np.zeros((0, 10), dtype=np.uint8), "empty frame"),
])
def test_gray_resize_refuses_what_is_not_a_frame(bad, match, monkeypatch):
    for native_function in (preprocess._native_gray_resize, None):
        monkeypatch.setattr(preprocess, "_native_gray_resize", native_function)
        with pytest.raises(InputError, match=match):
            gray_resize(bad, 224, 224)
    with pytest.raises(InputError, match="at least 1x1"):
        gray_resize(np.zeros((10, 10), dtype=np.uint8), 0, 5)


def test_gray_resize_takes_hxwx1_frames():
    frame = random_frame(np.random.default_rng(9), 90, 70, False)
    np.testing.assert_array_equal(gray_resize(frame[..., None], 224, 224), pillow_gray(frame, 224, 224))


@pytest.mark.parametrize("normalization", [{}, {"mean": 0.5, "std": 0.25}], ids=["scale", "mean-std"])
def test_preprocess_frames_writes_pillow_planes_into_the_batch(normalization):
    rng = np.random.default_rng(4)
    frames = [random_frame(rng, 300, 400, True), random_frame(rng, 90, 70, False), random_frame(rng, 1080, 1920, False)]
    preprocessing = {"grayscale": True, "resize": "pil_bicubic", "size": 224, "scale": 1 / 255, **normalization}
    batch = preprocess_frames(frames, preprocessing)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for frame, planes in zip(frames, batch):
        expected = pillow_gray(frame, 224, 224).astype(np.float32) * np.float32(1 / 255)
        if normalization:
            expected = (expected - np.float32(normalization["mean"])) / np.float32(normalization["std"])
        for plane in planes:
            np.testing.assert_array_equal(plane, expected)


def _compiler() -> list | None:
    command = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return command if command and shutil.which(command[0]) else None


# Each build of the C source that some machine runs: x86-64 picks one clone at load time (this CPU's), so the others
# are built one at a time here; the plain C build is what other architectures compile.
VARIANTS = {
    "baseline": ["-DFRAME_RESIZE_NO_CLONES"],
    "avx2": ["-DFRAME_RESIZE_NO_CLONES", "-mavx2"],
    "avx512": ["-DFRAME_RESIZE_NO_CLONES", "-march=x86-64-v4"],
    "plain-c": ["-DFRAME_RESIZE_PORTABLE"],
}
VARIANT_NEEDS = {"avx2": {"avx2"}, "avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl"}}


@pytest.mark.skipif(_compiler() is None or sysconfig.get_platform() != "linux-x86_64",
                    reason="builds the x86-64 variants of csrc/cpu/frame_resize.c with the C compiler Python was built "
                           "with; none here, or not x86-64 Linux")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_code_path_matches_pillow(variant, tmp_path):
    missing = VARIANT_NEEDS.get(variant, set()) - cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}")
    library = tmp_path / f"_frame_resize{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([*_compiler(), "-shared", "-fPIC", "-O3", "-std=c99", "-Wall", "-Wextra", "-Werror",
                    f"-I{sysconfig.get_paths()['include']}", *VARIANTS[variant], str(SOURCE), "-o", str(library)],
                   check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("_frame_resize", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(len(variant))
    # Row counts and widths that are not multiples of the 16-row blocks and 16-byte tiles, both pass orders.
    cases = [((1080, 1920), (224, 224)), ((37, 53), (224, 224)), ((4000, 300), (224, 99)), ((225, 223), (31, 45)),
             ((1, 1), (3, 5)), ((224, 224), (224, 224)), ((64, 700), (64, 17)), ((700, 64), (17, 64))]
    for (height, width), (out_h, out_w) in cases:
        for rgb in (False, True):
            for binary in (False, True):
                assert_module_matches_pillow(module, random_frame(rng, height, width, rgb, binary), out_h, out_w)
