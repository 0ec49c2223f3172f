"""adapter_out's split-K candidates (the block's attention projection and fc2 at batch 1-2): the K range of each
output tile split over 2-4 programs that store fp32 parts and count themselves in, the last one summing the parts
in a fixed order and running the residual epilogue. Against the reference at fp32 and the low-precision bounds,
K that the splits do not divide (empty splits included), odd tiles, NaN-poisoned outputs and parts; the counters
(left at 0, gating the epilogue); the tuner's output check; int32 limits; bad tunings."""

import pytest
import torch

import htkernels._tune as tune
import htkernels.adapter_out as aout
from htkernels import _arrival
from htkernels.errors import KernelInputError

from ..tolerances import RELATIVE, assert_relative

OP = "adapter_out"


def dense(rows, inner, width, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(rows, inner, generator=gen)
    w = torch.randn(width, inner, generator=gen) * inner ** -0.5
    return g, w, torch.randn(width, generator=gen), torch.randn(rows, width, generator=gen) * 3.0


def split(block_m=16, block_n=16, split_k=2):
    return dict(impl="triton", block_m=block_m, block_n=block_n, num_warps=4, num_stages=2, split_k=split_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,inner,width,split_k", [
    (1, 200, 48, 2),    # batch-1-like: one row tile
    (37, 200, 40, 3),   # 4 K blocks over 3 splits (2, 2, 0 blocks after rounding to BLOCK_K), odd rows and columns
    (37, 70, 40, 4),    # 2 K blocks over 4 splits: two splits are empty
    (50, 256, 33, 4),   # every split one K block; the last column tile mostly masked
])
def test_split_k_matches_reference(device, poisoned, dtype, rows, inner, width, split_k):
    args = [t.to(device=device, dtype=dtype) for t in dense(rows, inner, width, seed=rows + inner + split_k)]
    actual = aout.adapter_out_triton(*args, tuning=split(split_k=split_k))
    expected = aout.adapter_out_ref(*[t.cpu().double() for t in args])
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype], f"adapter_out split_k={split_k} {dtype} {rows}x{inner}")
    tiles = -(-rows // 16) * -(-width // 16)
    counters = _arrival.arrival_counters(OP, torch.device(device), args[1], tiles)
    assert counters.dtype == torch.int32 and not counters.any(), "every launch leaves its counters at 0"


def test_split_k_is_deterministic_and_reuses_its_counters(device):
    args = [t.to(device) for t in dense(21, 300, 40, seed=3)]
    first = aout.adapter_out_triton(*args, tuning=split(split_k=4))
    counters = _arrival.arrival_counters(OP, torch.device(device), args[1], 2 * 3)
    second = aout.adapter_out_triton(*args, tuning=split(split_k=4))
    assert torch.equal(first, second), "the parts are summed in one order whichever program arrives last"
    assert _arrival.arrival_counters(OP, torch.device(device), args[1], 2 * 3) is counters and not counters.any()
    other = torch.empty_like(args[1])
    assert _arrival.arrival_counters(OP, torch.device(device), other, 6) is not counters, "two weights, two sets"
    assert _arrival.arrival_counters("residual_adapter", torch.device(device), args[1], 6) is not counters, \
        "two ops never share counters"


@pytest.mark.parametrize("preset", [1, 2])
def test_only_the_last_arrival_runs_the_epilogue(device, preset):
    """A counter pre-set as a broken count would leave it gates only its own tile (tile 1 of 2×3; two splits): at 2
    ("more than all arrived") no arrival runs the epilogue and y stays NaN (poisoned); at 1 ("all but one arrived")
    the first arrival sums parts not yet written (NaN), and the count ends where the protocol puts it. (At 1, which
    program arrives first is the interpreter's order: on a GPU the other split may have finished already, so that
    case runs only under the interpreter.)"""
    from htkernels._triton import interpreting

    if preset == 1 and not interpreting():
        pytest.skip("which program arrives first is fixed only under the interpreter")
    args = [t.to(device) for t in dense(21, 150, 40, seed=4)]
    counters = _arrival.arrival_counters(OP, torch.device(device), args[1], 6)
    try:
        counters[1] = preset
        y = aout.adapter_out_triton(*args, tuning=split(split_k=2), poison=True)
        # At 1 its first arrival put the count back to 0 and the second left it at 1; at 2 both added to it.
        assert counters.tolist() == [0, 1 if preset == 1 else 4, 0, 0, 0, 0]
    finally:
        counters.zero_()
    # grouped_tile walks tiles in groups of 8 tile rows: with 2 tile rows, tile 1 is rows 16-20, columns 0-15.
    broken = torch.isnan(y.cpu())
    assert broken[16:, :16].all() and broken.sum() == 5 * 16


def test_the_tuner_rejects_a_split_candidate_whose_output_is_wrong(device, monkeypatch):
    """The output check (`verify`) as the tuner makes it on a GPU: a split candidate timed fastest whose counters are
    broken is rejected and its counters zeroed; the next fastest is checked and kept."""
    args = [t.to(device) for t in dense(19, 200, 40, seed=5)]
    seen = []

    def choose(op, key, candidates, launch, device_, verify=None):
        broken = next(c for c in candidates if c["split_k"] == 2 and c["block_m"] == 32)
        good = next(c for c in candidates if c["split_k"] == 4 and c["block_m"] == 32)
        tiles = 1 * 1  # 19 rows × 40 columns in one 32×64 tile
        counters = _arrival.arrival_counters(OP, torch.device(device), args[1], tiles)
        counters[0] = 2  # "more than all arrived": no program of the tile runs the epilogue, y stays NaN
        measured = [(candidates[0], 3.0), (broken, 1.0), (good, 2.0)]
        seen.append((measured, counters))
        return tune.LaunchTuner._verified(candidates[0], measured, verify)

    monkeypatch.setattr(tune.TUNER, "choose", choose)
    actual = aout.adapter_out_triton(*args)
    measured, counters = seen[0]
    assert isinstance(measured[1][1], str) and "rejected" in measured[1][1], measured[1]
    assert measured[2][1] == 2.0
    assert not counters.any(), "the rejected candidate's counters were zeroed"
    assert_relative(actual.cpu(), aout.adapter_out_ref(*[t.cpu().double() for t in args]), RELATIVE[torch.float32],
                    "after a rejected split candidate")


def test_split_candidates_are_offered_for_wide_inner_sizes_at_small_batches():
    def splits(rows, inner):
        return sorted({c["split_k"] for c in aout.tuning_candidates(rows, inner)})

    assert splits(197, 768) == splits(394, 3072) == [1, 2, 4]
    assert splits(197, 64) == [1], "the adapter's r→D GEMM (K = 64) is one K block"
    assert splits(8 * 197, 768) == [1], "at batch 8 the output tiles alone fill the SMs"
    assert all(c["impl"] == "triton" for c in aout.tuning_candidates(197, 768) if c["split_k"] > 1)


def test_split_candidates_past_int32_are_not_offered(monkeypatch):
    """The parts `[split, M, D]` are indexed in int32: a split whose parts would not fit is not offered."""
    offered = []

    def record(op, key, candidates, launch, device, verify=None):
        offered.append(sorted({c["split_k"] for c in candidates}))
        return candidates[0]

    monkeypatch.setattr(aout, "tuned_config", lambda op, key, candidates, launch, device, tuning, validate, verify:
                        record(op, key, candidates, launch, device, verify))
    args = dense(100, 130, 64, seed=6)  # offsets: g 12,999, w2 8,319, y 6,399; parts 12,800 (2) and 25,600 (4)
    for limit in (30_000, 14_000, 8_000):
        monkeypatch.setattr(tune, "INT32_LIMIT", limit)
        aout.adapter_out_triton(*args)
    assert offered == [[1, 2, 4], [1, 2], [1]]


@pytest.mark.parametrize("value", [0, -1, 1.5, "2"])
def test_bad_split_k_is_refused(device, value):
    args = [t.to(device) for t in dense(5, 130, 16, seed=7)]
    with pytest.raises(KernelInputError, match="split_k"):
        aout.adapter_out_triton(*args, tuning=dict(impl="triton", split_k=value))
