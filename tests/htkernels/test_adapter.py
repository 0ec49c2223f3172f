"""`adapter` (adapter_in then adapter_spatial_out as one op) and its pooled path: adapter_in's partial sums of the
image mean (`adapter_in_pooled`) and the spatial kernel reading them instead of reducing the image (`partials=`),
against the references at fp32 and the bf16 bound; odd grids (1×1 included), batch 1 and > 1, both filters,
tiles that do not divide an image, NaN-poisoned outputs."""

import pytest
import torch

from htkernels import adapter as whole
from htkernels import adapter_spatial as spatial
from htkernels.adapter_in import adapter_in_pooled_triton, adapter_in_ref, pooled_candidates
from htkernels.errors import KernelInputError

from ..tolerances import RELATIVE, assert_relative
from .test_adapter_spatial import spatial_args

WIDTH = 40


def adapter_args(batch, h, w, channels, spectral, seed, width=WIDTH):
    """x `[B, 1+h·w, D]` and every weight of `htkernels::adapter`, seeded."""
    _, filt, weights = spatial_args(batch, h, w, channels, spectral, seed)
    gen = torch.Generator().manual_seed(seed + 200)
    x = torch.randn(batch, 1 + h * w, width, generator=gen) * 2.0 + 0.5
    first = dict(w_norm=torch.randn(channels, width, generator=gen) * 0.3,
                 w_raw=torch.randn(channels, width, generator=gen) * 0.1, bias=torch.randn(channels, generator=gen),
                 eps=1e-5)
    last = dict(w2=torch.randn(width, channels, generator=gen) * 0.2, b2=torch.randn(width, generator=gen))
    return x, filt, first, weights, last


def moved(device, dtype, x, filt, first, weights, last):
    to = dict(device=device, dtype=dtype)
    return (x.to(**to), None if filt is None else filt.to(device),
            {k: v if isinstance(v, float) else v.to(**to) for k, v in first.items()},
            {k: v.to(**to) for k, v in weights.items()}, {k: v.to(**to) for k, v in last.items()})


def run(device, dtype, batch, h, w, channels, spectral, seed, tuning):
    args = adapter_args(batch, h, w, channels, spectral, seed)
    x, filt, first, weights, last = moved(device, dtype, *args)
    actual = whole.adapter_triton(x, h, w, **first, spectral=filt, **weights, **last, tuning=tuning)
    return actual, args


def reference(x, h, w, filt, first, weights, last, double=True):
    if double:
        x, filt = x.double(), None if filt is None else filt.double()
        first = {k: v if isinstance(v, float) else v.double() for k, v in first.items()}
        weights = {k: v.double() for k, v in weights.items()}
        last = {k: v.double() for k, v in last.items()}
    return whole.adapter_ref(x, h, w, **first, spectral=filt, **weights, **last)


@pytest.mark.parametrize("batch,h,w,channels,spectral", [
    (1, 5, 7, 16, False), (3, 3, 11, 16, False), (2, 4, 6, 24, True), (1, 6, 4, 24, True), (2, 1, 1, 16, False),
    (1, 1, 1, 16, True),
])
@pytest.mark.parametrize("impl", whole.IMPLS)
def test_adapter_equals_the_references_at_fp32(device, poisoned, batch, h, w, channels, spectral, impl):
    actual, args = run(device, torch.float32, batch, h, w, channels, spectral, batch + h * w, {"impl": impl})
    x, filt, first, weights, last = args
    assert actual.shape == x.shape and actual.dtype == torch.float32
    assert_relative(actual.cpu(), reference(x, h, w, filt, first, weights, last), RELATIVE[torch.float32],
                    f"adapter {impl} {batch}x{h}x{w}x{channels} spectral={spectral}")


@pytest.mark.parametrize("spectral", [False, True])
def test_pooled_adapter_in_bf16_within_its_bound(device, poisoned, spectral):
    actual, args = run(device, torch.bfloat16, 2, 5, 6, 16, spectral, 3, {"impl": "pooled"})
    assert actual.dtype == torch.bfloat16
    x, filt, first, weights, last = moved("cpu", torch.bfloat16, *args)
    expected = reference(x, 5, 6, filt, first, weights, last, double=False)
    assert_relative(actual.cpu().float(), expected.float(), RELATIVE[torch.bfloat16], f"adapter pooled bf16 {spectral}")


@pytest.mark.parametrize("block_m,single_pass,one_dot", [(8, False, False), (16, True, False), (16, False, True),
                                                          (64, True, True)])
@pytest.mark.parametrize("batch,tokens", [(1, 36), (3, 23), (4, 2)])
def test_pooled_adapter_in_sums_each_image_pixel_rows_as_stored(device, poisoned, batch, tokens, block_m,
                                                                single_pass, one_dot):
    """z as adapter_in's; the partial sums of each image's rows 1.. of the stored z, CLS row excluded, whether the
    tiles divide the image or not (23 rows in 8- and 16-row tiles; 2-row images in a 64-row tile)."""
    gen = torch.Generator().manual_seed(batch * tokens + block_m)
    x = (torch.randn(batch * tokens, 48, generator=gen) * 2.0 + 1.0).to(device)
    w_norm, w_raw = (torch.randn(16, 48, generator=gen).to(device) for _ in range(2))
    bias = torch.randn(16, generator=gen).to(device)
    tuning = dict(block_m=block_m, block_d=32, single_pass=single_pass, one_dot=one_dot)
    z, partials = adapter_in_pooled_triton(x, w_norm, w_raw, bias, 1e-5, tokens, tuning=tuning)
    assert partials.shape == (batch, -(-tokens // block_m), 16) and partials.dtype == torch.float32
    expected_z = adapter_in_ref(x.cpu().double(), w_norm.cpu().double(), w_raw.cpu().double(), bias.cpu().double(),
                                1e-5)
    assert_relative(z.cpu(), expected_z, RELATIVE[torch.float32], "pooled adapter_in z")
    sums = z.cpu().double().view(batch, tokens, 16)[:, 1:].sum(dim=1)
    torch.testing.assert_close(partials.cpu().double().sum(dim=1), sums, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("spectral", [False, True])
@pytest.mark.parametrize("config", spatial.tuning_candidates(1, 5, 7, 16, pooled=True),
                         ids=lambda c: "p{block_p}w{num_warps}split{split_conv:d}".format(**c))
def test_spatial_kernel_with_partials_equals_the_reference(device, poisoned, spectral, config):
    """Every pooled candidate of the spatial kernel, the image mean from partial sums (3 partials per image here,
    not aligned to its tiles), both filters (Σκ scales the mean of S to F's)."""
    z, filt, weights = spatial_args(2, 5, 7, 16, spectral, seed=11)
    pixel_sums = z[:, 1:].sum(dim=1)
    partials = torch.stack([pixel_sums * 0.25, pixel_sums * 0.5, pixel_sums * 0.25], dim=1).contiguous()
    on = dict(device=device)
    actual = spatial.adapter_spatial_triton(z.to(**on), 5, 7, None if filt is None else filt.to(**on),
                                            **{k: v.to(**on) for k, v in weights.items()}, tuning=config,
                                            partials=partials.to(**on))
    expected = spatial.adapter_spatial_ref(z.double(), 5, 7, None if filt is None else filt.double(),
                                           **{k: v.double() for k, v in weights.items()})
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"spatial with partials {config} {spectral}")


def test_the_spatial_kernel_reads_the_partials(device):
    """Partials that are not the image's sums change α, so the output: the kernel does use them."""
    z, filt, weights = spatial_args(1, 5, 7, 16, False, seed=12)
    on = dict(device=device)
    args = (z.to(**on), 5, 7, None, *[v.to(**on) for v in weights.values()])
    true = z[:, 1:].sum(dim=1, keepdim=True).contiguous().to(**on)
    right = spatial.adapter_spatial_triton(*args, partials=true)
    wrong = spatial.adapter_spatial_triton(*args, partials=true * 3.0 + 1.0)
    plain = spatial.adapter_spatial_triton(*args)
    torch.testing.assert_close(right, plain, rtol=1e-5, atol=1e-5)
    assert (wrong - plain).abs().max() > 1e-3


BAD_PARTIALS = {"channels": lambda: torch.zeros(2, 3, 8), "batch": lambda: torch.zeros(1, 3, 16),
                "none": lambda: torch.zeros(2, 0, 16), "dtype": lambda: torch.zeros(2, 3, 16, dtype=torch.float64),
                "strided": lambda: torch.zeros(2, 16, 3).transpose(1, 2)}


@pytest.mark.parametrize("bad", BAD_PARTIALS)
def test_bad_partials_are_refused(device, bad):
    z, filt, weights = spatial_args(2, 5, 7, 16, False, seed=13)
    on = dict(device=device)
    with pytest.raises(KernelInputError, match="partials"):
        spatial.adapter_spatial_triton(z.to(**on), 5, 7, None, *[v.to(**on) for v in weights.values()],
                                       partials=BAD_PARTIALS[bad]().to(**on))


def test_bad_tuning_and_shapes_are_refused(device):
    x, filt, first, weights, last = moved(device, torch.float32, *adapter_args(1, 2, 3, 16, False, seed=1))
    with pytest.raises(KernelInputError, match="impl"):
        whole.adapter_triton(x, 2, 3, **first, spectral=filt, **weights, **last, tuning={"impl": "fast"})
    with pytest.raises(KernelInputError, match="tokens"):
        whole.adapter_triton(x, 3, 3, **first, spectral=filt, **weights, **last)
    with pytest.raises(KernelInputError, match="images of 5 rows"):
        adapter_in_pooled_triton(x.view(-1, WIDTH)[:6], first["w_norm"], first["w_raw"], first["bias"], 1e-5, 5)


def test_candidates():
    assert [c["impl"] for c in whole.candidates()] == ["separate", "pooled"]
    assert all(c["block_m"] <= 197 for c in pooled_candidates(256, 197))
    assert pooled_candidates(1, 2) and all(c["block_m"] == 8 for c in pooled_candidates(1, 2))
    pooled = spatial.tuning_candidates(1, 14, 14, 64, pooled=True)
    assert pooled and all(c["pool_block"] == 0 for c in pooled) and len(pooled) == len({str(c) for c in pooled})
    assert spatial.spatial_out_candidates(1, 14, 14, 64, pooled=True)[0]["impl"] == "separate"
