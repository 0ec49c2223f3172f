"""`head_logits`: the seg head's tail as one kernel (the levels read in place, CLS rows skipped, logits stored
class-major) against torch's concatenation + fp32 GEMM; 1-4 levels of unequal widths, odd grids (1×1 included),
batch 1 and > 1, strided levels, bf16 levels, NaN-poisoned output, bad input refused."""

import pytest
import torch

from htkernels import head_logits as tail
from htkernels.errors import KernelInputError

from ..tolerances import RELATIVE, assert_relative

CONFIGS = [c for c in tail.tuning_candidates(196) + tail.tuning_candidates(4096) if c["impl"] == "triton"]


def tail_args(batch, h, w, widths, classes, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    levels = [torch.randn(batch, 1 + h * w, width, generator=gen).to(dtype) for width in widths]
    weight = torch.randn(classes, sum(widths), generator=gen) * 0.1
    bias = torch.randn(classes, generator=gen)
    return levels, weight, bias


def expected_of(levels, weight, bias, h, w):
    return tail.head_logits_ref([level.double() for level in levels], weight.double(), bias.double(), h, w)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "p{block_p}k{block_k}w{num_warps}".format(**c))
def test_every_kernel_candidate_equals_the_reference_at_fp32(device, poisoned, config):
    levels, weight, bias = tail_args(2, 14, 14, (48, 40, 56), 3, seed=1)
    on = [level.to(device) for level in levels]
    actual = tail.head_logits_triton(on, weight.to(device), bias.to(device), 14, 14, tuning=config)
    assert actual.shape == (2, 3, 14, 14) and actual.dtype == torch.float32
    assert_relative(actual.cpu(), expected_of(levels, weight, bias, 14, 14), RELATIVE[torch.float32],
                    f"head_logits {config}")


@pytest.mark.parametrize("batch,h,w,widths,classes", [
    (1, 5, 7, (24,), 2), (3, 3, 11, (16, 40), 5), (1, 1, 1, (32, 32, 32), 1), (2, 6, 4, (16, 24, 8, 40), 17),
])
def test_levels_grids_and_classes(device, poisoned, batch, h, w, widths, classes):
    """One to four levels of unequal widths (not multiples of the K step), grids not a multiple of the pixel tile,
    17 classes (two class blocks' worth of padding in one), one class."""
    levels, weight, bias = tail_args(batch, h, w, widths, classes, seed=batch + h * w)
    on = [level.to(device) for level in levels]
    actual = tail.head_logits_triton(on, weight.to(device), bias.to(device), h, w, tuning={"impl": "triton"})
    assert_relative(actual.cpu(), expected_of(levels, weight, bias, h, w), RELATIVE[torch.float32],
                    f"head_logits {batch}x{h}x{w} {widths} C={classes}")


def test_strided_and_bf16_levels(device, poisoned):
    """Levels that are views (every other token row, a column window) and bf16 levels (read, then fp32 products,
    as the reference's `.float()`)."""
    levels, weight, bias = tail_args(2, 4, 5, (32, 24), 3, seed=5)
    wide = [torch.cat([level, level], dim=1) for level in levels]  # [B, 2·N, K]: the views below take rows 0, 2, ..
    views = [level[:, ::2] for level in wide]
    assert not views[0].is_contiguous()
    actual = tail.head_logits_triton([v.to(device) for v in views], weight.to(device), bias.to(device), 4, 5,
                                     tuning={"impl": "triton"})
    assert_relative(actual.cpu(), expected_of(views, weight, bias, 4, 5), RELATIVE[torch.float32], "strided levels")
    low = [level.to(torch.bfloat16) for level in levels]
    actual = tail.head_logits_triton([v.to(device) for v in low], weight.to(device), bias.to(device), 4, 5,
                                     tuning={"impl": "triton"})
    assert_relative(actual.cpu(), expected_of(low, weight, bias, 4, 5), RELATIVE[torch.float32], "bf16 levels")


def test_torch_candidate_is_the_reference(device):
    levels, weight, bias = tail_args(2, 3, 3, (16, 16), 2, seed=7)
    on = [level.to(device) for level in levels]
    actual = tail.head_logits_triton(on, weight.to(device), bias.to(device), 3, 3, tuning={"impl": "torch"})
    assert torch.equal(actual.cpu(), tail.head_logits_ref(levels, weight, bias, 3, 3))


def test_bad_input_is_refused(device):
    levels, weight, bias = tail_args(2, 3, 3, (16, 16), 2, seed=8)
    on = [level.to(device) for level in levels]
    w, b = weight.to(device), bias.to(device)
    with pytest.raises(KernelInputError, match="tokens"):
        tail.head_logits_triton(on, w, b, 3, 4)
    with pytest.raises(KernelInputError, match="level 1"):
        tail.head_logits_triton([on[0], on[1][:1]], w, b, 3, 3)
    with pytest.raises(KernelInputError, match="weight"):
        tail.head_logits_triton(on, w[:, :20], b, 3, 3)
    with pytest.raises(KernelInputError, match="levels"):
        tail.head_logits_triton(on * 3, torch.zeros(2, 96, device=device), b, 3, 3)
    with pytest.raises(KernelInputError, match="impl"):
        tail.head_logits_triton(on, w, b, 3, 3, tuning={"impl": "fast"})
    with pytest.raises(KernelInputError, match="block_p"):
        tail.head_logits_triton(on, w, b, 3, 3, tuning={"impl": "triton", "block_p": 12})
