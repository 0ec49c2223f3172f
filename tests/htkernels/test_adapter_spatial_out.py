"""`adapter_spatial_out`: adapter_spatial with adapter_out in its epilogue (g never stored) against the references
of the two ops one after the other, for every fused candidate the tuner may pick, odd grids, batch 1 and > 1, both
filters, CLS rows included, NaN-poisoned outputs (a row or column the kernel fails to write fails the test)."""

import pytest
import torch

from htkernels import adapter_spatial as spatial
from htkernels.adapter_out import adapter_out_ref
from htkernels.errors import KernelInputError

from ..tolerances import RELATIVE, assert_relative
from .test_adapter_spatial import spatial_args

WIDTH = 40  # not a multiple of either column step


def out_args(batch, h, w, channels, spectral, seed, width=WIDTH):
    z, filt, weights = spatial_args(batch, h, w, channels, spectral, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    w2 = torch.randn(width, channels, generator=gen) * 0.2
    b2 = torch.randn(width, generator=gen)
    residual = torch.randn(batch, 1 + h * w, width, generator=gen) * 3.0
    return z, filt, weights, w2, b2, residual


def expected_of(z, h, w, filt, weights, w2, b2, residual):
    """The two references one after the other, in fp64 (fp32 data) or the reference's own roundings (bf16: g in
    bf16, as the fused kernel rounds it before its dot)."""
    if z.dtype == torch.float32:
        z, filt, w2, b2, residual = (None if t is None else t.double() for t in (z, filt, w2, b2, residual))
        weights = {k: v.double() for k, v in weights.items()}
    g = spatial.adapter_spatial_ref(z, h, w, filt, **weights)
    batch, tokens, channels = z.shape
    return adapter_out_ref(g.reshape(-1, channels), w2, b2, residual.reshape(-1, w2.shape[0])).view(batch, tokens, -1)


def moved(device, dtype, z, filt, weights, w2, b2, residual):
    to = dict(device=device, dtype=dtype)
    return (z.to(**to), None if filt is None else filt.to(device), {k: v.to(**to) for k, v in weights.items()},
            w2.to(**to), b2.to(**to), residual.to(**to))


FUSED = []
for _batch in (1, 8, 64, 256):
    for _config in spatial.spatial_out_candidates(_batch, 14, 14, 64):
        if _config["impl"] == "fused" and _config not in FUSED:
            FUSED.append(_config)


def test_candidates_keep_the_two_launches_first_and_fuse_only_where_a_dot_fits():
    candidates = spatial.spatial_out_candidates(1, 14, 14, 64)
    assert candidates[0]["impl"] == "separate"
    assert FUSED and all(c["block_p"] >= 16 and c["block_n"] in (64, 128) for c in FUSED)
    assert not any(c["block_p"] < 16 for c in spatial.spatial_out_candidates(1, 14, 14, 64) if c["impl"] == "fused")


@pytest.mark.parametrize("config", FUSED, ids=lambda c: "p{block_p}w{num_warps}pool{pool_block}split{split_conv:d}"
                         "n{block_n}".format(**c))
def test_every_fused_candidate_equals_the_two_references_at_fp32(device, poisoned, config):
    args = out_args(2, 5, 7, 16, False, seed=1)
    z, filt, weights, w2, b2, residual = moved(device, torch.float32, *args)
    actual = spatial.adapter_spatial_out_triton(z, 5, 7, filt, **weights, w2=w2, b2=b2, residual=residual,
                                                tuning=config)
    z0, f0, w0, w20, b20, r0 = args
    assert_relative(actual.cpu(), expected_of(z0, 5, 7, f0, w0, w20, b20, r0), RELATIVE[torch.float32],
                    f"spatial_out {config}")


@pytest.mark.parametrize("batch,h,w,channels,spectral", [
    (1, 5, 7, 16, False), (3, 3, 11, 16, False), (1, 6, 4, 24, True), (2, 4, 6, 24, True), (1, 1, 1, 16, False),
])
@pytest.mark.parametrize("impl", ["fused", "separate"])
def test_fused_and_separate_at_odd_shapes(device, poisoned, batch, h, w, channels, spectral, impl):
    """Grids whose pixel count is not a multiple of the tile (1×1 included: one pixel and the CLS row), 24
    channels (padded to 32), spectral filters (the circular filter kernel runs first), 1-3 images."""
    args = out_args(batch, h, w, channels, spectral, seed=batch + h * w)
    z, filt, weights, w2, b2, residual = moved(device, torch.float32, *args)
    actual = spatial.adapter_spatial_out_triton(z, h, w, filt, **weights, w2=w2, b2=b2, residual=residual,
                                                tuning={"impl": impl, "block_p": 16, "block_n": 64}
                                                if impl == "fused" else {"impl": impl})
    assert actual.shape == (batch, 1 + h * w, WIDTH)
    z0, f0, w0, w20, b20, r0 = args
    assert_relative(actual.cpu(), expected_of(z0, h, w, f0, w0, w20, b20, r0), RELATIVE[torch.float32],
                    f"spatial_out {impl} {batch}x{h}x{w}x{channels} spectral={spectral}")


@pytest.mark.parametrize("spectral", [False, True])
def test_fused_in_bf16_within_its_bound(device, poisoned, spectral):
    args = out_args(2, 5, 6, 16, spectral, seed=3)
    z, filt, weights, w2, b2, residual = moved(device, torch.bfloat16, *args)
    actual = spatial.adapter_spatial_out_triton(z, 5, 6, filt, **weights, w2=w2, b2=b2, residual=residual,
                                                tuning={"impl": "fused", "block_p": 16, "block_n": 128})
    assert actual.dtype == torch.bfloat16
    expected = expected_of(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in (z, 5, 6, filt)),
                           {k: v.cpu() for k, v in weights.items()}, w2.cpu(), b2.cpu(), residual.cpu())
    assert_relative(actual.cpu().float(), expected.float(), RELATIVE[torch.bfloat16], f"spatial_out bf16 {spectral}")


def test_strided_residual_is_read_in_place(device, poisoned):
    """The residual as a slice of a wider tensor (its row stride is not D)."""
    z, filt, weights, w2, b2, residual = out_args(1, 4, 5, 16, False, seed=7)
    wide = torch.cat([residual, torch.full_like(residual[..., :3], float("nan"))], dim=-1)[..., :WIDTH]
    assert not wide.is_contiguous()
    z_, f_, weights_, w2_, b2_, wide_ = moved(device, torch.float32, z, filt, weights, w2, b2, wide)
    actual = spatial.adapter_spatial_out_triton(z_, 4, 5, f_, **weights_, w2=w2_, b2=b2_, residual=wide_,
                                                tuning={"impl": "fused", "block_p": 16, "block_n": 64})
    assert_relative(actual.cpu(), expected_of(z, 4, 5, filt, weights, w2, b2, residual), RELATIVE[torch.float32],
                    "strided residual")


def test_the_public_op_on_cpu_is_the_two_references():
    z, filt, weights, w2, b2, residual = out_args(2, 3, 4, 16, True, seed=9)
    actual = torch.ops.htkernels.adapter_spatial_out(z, 3, 4, filt, *weights.values(), w2, b2, residual)
    assert_relative(actual, expected_of(z, 3, 4, filt, weights, w2, b2, residual), RELATIVE[torch.float32],
                    "htkernels::adapter_spatial_out on CPU")


@pytest.mark.parametrize("change,match", [
    (dict(w2=torch.zeros(WIDTH, 8)), "w2 has shape"),
    (dict(b2=torch.zeros(WIDTH + 1)), "b2 has shape"),
    (dict(residual=torch.zeros(2, 13, WIDTH)), "residual has shape"),
    (dict(residual=torch.zeros(1, 21, WIDTH, dtype=torch.float16)), "residual has dtype"),
    (dict(tuning={"impl": "fused", "block_p": 8, "block_n": 64}), "block_p ≥ 16"),
    (dict(tuning={"impl": "fused", "block_p": 16, "block_n": 48}), "power-of-two block_n"),
    (dict(tuning={"impl": "both"}), "impl='both'"),
], ids=["w2", "b2", "residual-shape", "residual-dtype", "block-p", "block-n", "impl"])
def test_bad_arguments_are_refused(device, change, match):
    z, filt, weights, w2, b2, residual = moved(device, torch.float32, *out_args(1, 4, 5, 16, False, seed=2))
    kwargs = dict(w2=w2, b2=b2, residual=residual)
    kwargs.update({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in change.items()})
    with pytest.raises(KernelInputError, match=match):
        spatial.adapter_spatial_out_triton(z, 4, 5, filt, **weights, **kwargs)


def test_past_int32_offsets_only_the_two_launches_are_offered(monkeypatch):
    """The fused epilogue indexes the residual and y in int32; where they would not fit, the tuner is offered the
    two launches alone (adapter_out falls back to cuBLAS there)."""
    import htkernels._tune as tune

    offered = []

    def record(op, key, candidates, launch, device, verify=None):
        offered.append((op, [c.get("impl") for c in candidates]))
        return candidates[0]

    monkeypatch.setattr(tune.TUNER, "choose", record)
    z, filt, weights, w2, b2, residual = out_args(1, 3, 4, 16, False, seed=4)
    spatial.adapter_spatial_out_triton(z, 3, 4, filt, **weights, w2=w2, b2=b2, residual=residual)
    monkeypatch.setattr(spatial, "int32_offsets", lambda *tensors, output_elements=0: False)
    spatial.adapter_spatial_out_triton(z, 3, 4, filt, **weights, w2=w2, b2=b2, residual=residual)
    (first, second) = [impls for op, impls in offered if op == "adapter_spatial_out"]
    assert "fused" in first and second == ["separate"]
