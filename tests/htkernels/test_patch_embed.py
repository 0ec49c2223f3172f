"""`htkernels::patch_embed`: the fused embedding GEMM (patches read from the image, bias, position embedding and CLS
row in the epilogue) and the unfused ops it is tuned against, both equal to the reference; every tuner candidate,
odd sizes, batch 1 and > 1, strided images, NaN-poisoned outputs (an element the kernel fails to write fails)."""

import pytest
import torch

from htkernels import patch_embed as pe
from htkernels.errors import KernelInputError

from ..tolerances import RELATIVE, assert_relative

# Every fused candidate the tuner may pick at the benchmarks' batch sizes (ViT-B/16: 196 patches per image).
CANDIDATES = []
for _batch in (1, 8, 64, 256):
    for _config in pe.tuning_candidates(_batch * 196):
        if _config not in CANDIDATES:
            CANDIDATES.append(_config)
FUSED = [c for c in CANDIDATES if c["impl"] == "triton"]


def embed_args(batch, size, patch, width, dtype, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grid = size // patch

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    images = torch.randn(batch, 3, size, size, generator=generator) * 2.0 + 0.5
    return (images, randn(width, 3 * patch * patch, scale=0.05), randn(width) if bias else None, randn(1, 1, width),
            randn(1, grid * grid, width), patch)


def expected_of(args):
    images, weight, bias, cls_pos, patch_pos, patch = args
    if weight.dtype == torch.float32:  # fp64 truth for fp32; the reference's own fp32 math for bf16 (same rounding)
        return pe.patch_embed_ref(images.double(), weight.double(), None if bias is None else bias.double(),
                                  cls_pos.double(), patch_pos.double(), patch)
    return pe.patch_embed_ref(*args)


def test_reference_is_the_stride_p_convolution():
    """Independently of the im2col order: conv2d with the unflattened kernel, flattened to tokens, plus pos, CLS."""
    images, weight, bias, cls_pos, patch_pos, patch = embed_args(2, 20, 4, 24, torch.float64, seed=1)
    conv = torch.nn.functional.conv2d(images.double(), weight.reshape(24, 3, 4, 4), bias, stride=4)
    tokens = conv.flatten(2).transpose(1, 2) + patch_pos
    expected = torch.cat([cls_pos.expand(2, -1, -1), tokens], dim=1)
    actual = pe.patch_embed_ref(images.double(), weight, bias, cls_pos, patch_pos, patch)
    assert_relative(actual, expected, 1e-12, "patch_embed_ref vs conv2d")


@pytest.mark.parametrize("config", FUSED, ids=lambda c: f"m{c['block_m']}n{c['block_n']}w{c['num_warps']}")
def test_every_fused_candidate_equals_the_reference_at_fp32(device, poisoned, config):
    args = embed_args(3, 48, 16, 40, torch.float32, seed=2)
    moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    actual = pe.patch_embed_triton(*moved, tuning=config).cpu()
    assert actual.shape == (3, 1 + 9, 40) and actual.dtype == torch.float32
    assert_relative(actual, expected_of(args), RELATIVE[torch.float32], f"patch_embed {config}")


@pytest.mark.parametrize("batch,size,patch,width,bias", [(1, 20, 4, 24, True), (2, 20, 4, 24, False),
                                                         (1, 48, 16, 72, True), (4, 32, 16, 130, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_and_unfused_at_odd_sizes(device, poisoned, batch, size, patch, width, bias, dtype):
    """K = 48 (below one 64-wide K step), widths not multiples of the tile, 1-4 images; bf16 within its bound
    of the reference, which rounds the image to bf16 and sums in fp32 as the kernel does."""
    args = embed_args(batch, size, patch, width, dtype, bias=bias, seed=batch + size)
    moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    expected = expected_of(args)
    for impl in ("triton", "torch"):
        actual = pe.patch_embed_triton(*moved, tuning={"impl": impl}).cpu()
        assert actual.dtype == dtype
        assert_relative(actual.float(), expected.float(), RELATIVE[dtype], f"patch_embed {impl} {dtype}")


def test_strided_images_are_read_in_place(device, poisoned):
    """Channels-last images and a crop of a larger image: the kernel reads them through their strides."""
    images, *rest = embed_args(2, 32, 16, 40, torch.float32, seed=5)
    expected = expected_of((images, *rest))
    wide = torch.zeros(2, 3, 40, 44)
    wide[:, :, 3:35, 5:37] = images
    for strided in (images.to(memory_format=torch.channels_last), wide[:, :, 3:35, 5:37]):
        assert not strided.is_contiguous()
        actual = pe.patch_embed_triton(strided.to(device), *(a.to(device) if isinstance(a, torch.Tensor) else a
                                                              for a in rest), tuning={"impl": "triton"}).cpu()
        assert_relative(actual, expected, RELATIVE[torch.float32], "patch_embed strided images")


@pytest.mark.parametrize("change,match", [
    (lambda a: (a[0][:, :, :, :-1],) + a[1:], "not square multiples"),
    (lambda a: (a[0][:, :, :-4, :-4],) + a[1:], "not square multiples"),
    (lambda a: a[:1] + (a[1][:, :-1],) + a[2:], "weight has shape"),
    (lambda a: a[:3] + (a[3][:, :, :-1],) + a[4:], "cls_pos has shape"),
    (lambda a: a[:4] + (a[4][:, :-1],) + a[5:], "patch_pos has shape"),
    (lambda a: a[:3] + (a[3].double(),) + a[4:], "cls_pos|dtype"),
    (lambda a: (a[0][0],) + a[1:], r"must be \[B, C, S, S\]"),
], ids=["not-square", "not-a-multiple", "weight", "cls", "pos", "dtype", "rank"])
def test_bad_inputs_are_refused(device, change, match):
    args = change(embed_args(1, 32, 16, 24, torch.float32))
    moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(KernelInputError, match=match):
        pe.patch_embed_triton(*moved)


def test_the_default_is_the_unfused_ops_and_the_kernel_is_a_candidate():
    candidates = pe.tuning_candidates(196)
    assert candidates[0]["impl"] == "torch" and all(c["impl"] == "triton" for c in candidates[1:])
