"""The kernels' own source (csrc/*.cu), run by the CPU emulation of CUDA in tests/csrc/emulation, against the
references: the GPU-free check of their indexing, reductions, barriers and numerics. The same cases run on the real
GPU in test_cuda_ops_gpu.py."""

import pytest
import torch

from engine.bench.inputs import pil_weights
from htkernels.pillow import vertical_pass_first
from htkernels.preprocess import preprocess_ref
from htkernels.testing import PARAM_NAMES, random_frames, reference_spatial, spatial_inputs

from ..tolerances import RELATIVE, assert_relative
from . import emulation
from .test_cuda_ops_gpu import DTYPES, PREPROCESS_CASES, SPATIAL_CASES

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(emulation.unavailable_reason()), reason=emulation.unavailable_reason() or "ok")]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return emulation.build(tmp_path_factory.mktemp("htk_emulated"))


def test_translation_rewrites_every_launch():
    for source in emulation.CSRC.glob("*.cu"):
        translated = emulation.translate(source.read_text())
        assert "<<<" not in translated and "emu::launch(" in translated, source.name


# One thread per CUDA thread is slow for many blocks: the large batch (the full-tile path) runs once.
EMULATED_SPATIAL = [(case, spectral, dtype) for case in SPATIAL_CASES for spectral in (False, True) for dtype in DTYPES
                    if case[0] < 8 or (dtype == torch.float32 and not spectral)]


@pytest.mark.parametrize("case, spectral, dtype", EMULATED_SPATIAL, ids=lambda value: str(value).replace(" ", ""))
def test_emulated_adapter_spatial_matches_reference(library, case, spectral, dtype):
    batch, h, w, channels = case
    z, filt, params = spatial_inputs(batch, h, w, channels, spectral, dtype, "cpu", seed=sum(case) + spectral)
    out = emulation.adapter_spatial(library, z, h, w, filt, params, PARAM_NAMES)
    assert_relative(out, reference_spatial(z, h, w, filt, params), RELATIVE[dtype],
                    f"emulated adapter_spatial {case} spectral={spectral} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PREPROCESS_CASES, ids=lambda case: "b{}_{}x{}_to_{}x{}_{}".format(
    *case[:5], "rgb" if case[5] else "gray"))
def test_emulated_preprocess_matches_reference_exactly(library, case, dtype):
    batch, height, width, out_h, out_w, rgb = case
    frames = random_frames(batch, height, width, rgb, seed=sum(case[:5]))
    rows, cols = pil_weights(height, out_h), pil_weights(width, out_w)
    if vertical_pass_first(height, width, out_h, out_w):
        # The launcher runs the horizontal pass first; the Python wrapper transposes for Pillow's other order.
        out = emulation.preprocess(library, frames.transpose(1, 2).contiguous(), cols, rows, 1 / 255, dtype)
        out = out.transpose(2, 3).contiguous()
    else:
        out = emulation.preprocess(library, frames, rows, cols, 1 / 255, dtype)
    expected = preprocess_ref(frames, rows, cols, 1 / 255, dtype)
    assert torch.equal(out, expected), f"{case} {dtype}: max diff {(out.double() - expected.double()).abs().max()}"


def test_emulated_launcher_reports_bad_arguments(library):
    z, filt, params = spatial_inputs(1, 3, 4, 8, False)
    params["noise_w1"] = params["noise_w1"][:0]
    with pytest.raises(ValueError, match="noise_hidden 0 is out of range"):
        emulation.adapter_spatial(library, z, 3, 4, filt, params, PARAM_NAMES)
