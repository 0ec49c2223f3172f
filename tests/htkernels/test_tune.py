"""The launch tuner (`htkernels._tune`) and every candidate configuration it may choose.

The tuner's timing needs a GPU (CUDA graphs); here its choice logic runs with an injected measure, and every
candidate configuration of every op runs (interpreted on CPU, compiled on a GPU) against the reference, so
whatever the tuner picks on a GPU computes the right numbers."""

import pytest
import torch

import htkernels._tune as tune
from htkernels import envs
from htkernels.adapter_in import adapter_in_ref, adapter_in_triton
from htkernels.adapter_in import tuning_candidates as in_candidates
from htkernels.adapter_out import adapter_out_ref, adapter_out_triton
from htkernels.adapter_out import tuning_candidates as out_candidates
from htkernels.adapter_spatial import adapter_spatial_ref, adapter_spatial_triton
from htkernels.adapter_spatial import tuning_candidates as spatial_candidates

from ..tolerances import RELATIVE, assert_relative
from .test_adapter_spatial import spatial_args

CPU = torch.device("cpu")
A, B, C = dict(v=1), dict(v=2), dict(v=3)


def unique(configs):
    seen = []
    for config in configs:
        if config not in seen:
            seen.append(config)
    return seen


# The model's shapes (ViT-B/16, 14×14 grid, r=64) at the batch sizes of the benchmarks.
MODEL_BATCHES = (1, 8, 64, 256)
IN_CANDIDATES = unique(c for b in MODEL_BATCHES for c in in_candidates(b * 197))
# adapter_out as the adapter's r→D GEMM (tested at inner 16) and as the block's projection/fc2 (inner 768: 200).
OUT_CANDIDATES = [(config, tested) for inner, tested in ((64, 16), (768, 200))
                  for config in unique(c for b in MODEL_BATCHES for c in out_candidates(b * 197, inner))]
SPATIAL_CANDIDATES = unique(c for b in MODEL_BATCHES for c in spatial_candidates(b, 14, 14, 64))


class Measure:
    """An injected measure: fixed times per configuration (or an exception), and a record of what was timed."""

    def __init__(self, times: dict):
        self.times = times
        self.calls = []

    def __call__(self, launch, device):
        launch()
        value = self.times[self.calls[-1]["v"]] if self.calls else None
        if isinstance(value, Exception):
            raise value
        return value


def tuner_with(times: dict, monkeypatch, active=True):
    measure = Measure(times)
    tuner = tune.LaunchTuner(measure=measure)
    monkeypatch.setattr(tune.LaunchTuner, "active", staticmethod(lambda device: active))
    return tuner, measure


def test_the_fastest_candidate_wins_and_is_remembered(monkeypatch):
    tuner, measure = tuner_with({1: 10.0, 2: 6.0, 3: 8.0}, monkeypatch)
    assert tuner.choose("op", (1,), [A, B, C], measure.calls.append, CPU) == B
    assert [c["v"] for c in measure.calls] == [1, 2, 3]
    assert tuner.choose("op", (1,), [A, B, C], measure.calls.append, CPU) == B
    assert len(measure.calls) == 3, "a remembered choice is not measured again"
    assert tuner.choose("op", (2,), [A, B, C], measure.calls.append, CPU) == B
    assert len(measure.calls) == 6, "another shape key is measured on its own"
    (first, second) = tuner.report()
    assert first["op"] == "op" and first["key"] == [1] and first["config"] == B
    assert [row["us"] for row in first["measured"]] == [10.0, 6.0, 8.0]


def test_the_default_stays_unless_another_is_clearly_faster(monkeypatch):
    tuner, measure = tuner_with({1: 10.0, 2: 9.8, 3: 11.0}, monkeypatch)
    assert tuner.choose("op", (), [A, B, C], measure.calls.append, CPU) == A  # 2 % faster: noise
    tuner, measure = tuner_with({1: 10.0, 2: 9.6, 3: 11.0}, monkeypatch)
    assert tuner.choose("op", (), [A, B, C], measure.calls.append, CPU) == B  # 4 % faster


def test_candidates_that_cannot_launch_are_skipped_and_reported(monkeypatch):
    tuner, measure = tuner_with({1: RuntimeError("out of resources: shared memory"), 2: 7.0, 3: 5.0}, monkeypatch)
    assert tuner.choose("op", (), [A, B, C], measure.calls.append, CPU) == C
    assert tuner.report()[0]["measured"][0] == {"config": A, "error": "RuntimeError: out of resources: shared memory"}
    tuner, measure = tuner_with({1: RuntimeError("a"), 2: RuntimeError("b"), 3: RuntimeError("c")}, monkeypatch)
    assert tuner.choose("op", (), [A, B, C], measure.calls.append, CPU) == A, "nothing ran: the default"


def test_a_candidate_whose_output_check_fails_is_rejected_and_the_next_fastest_checked(monkeypatch):
    tuner, measure = tuner_with({1: 10.0, 2: 5.0, 3: 7.0}, monkeypatch)
    checked = []

    def verify(config):
        checked.append(config["v"])
        return "3 non-finite values where the default's are finite" if config == B else None

    assert tuner.choose("op", (), [A, B, C], measure.calls.append, CPU, verify) == C
    assert checked == [2, 3], "the fastest first, then the next; the default is never checked"
    rows = tuner.report()[0]["measured"]
    assert rows[1] == {"config": B, "error": "rejected, output differs from the default's: 3 non-finite values "
                                             "where the default's are finite"}
    assert rows[2] == {"config": C, "us": 7.0}


def test_a_check_that_raises_rejects_and_all_rejected_keeps_the_default(monkeypatch):
    tuner, measure = tuner_with({1: 10.0, 2: 5.0, 3: 7.0}, monkeypatch)

    def verify(config):
        if config == B:
            raise RuntimeError("illegal memory access")
        return "max |difference| 9 over 0.05 of max |expected| 1"

    assert tuner.choose("op", (), [A, B, C], measure.calls.append, CPU, verify) == A
    errors = [row.get("error", "") for row in tuner.report()[0]["measured"]]
    assert errors[0] == "" and "its output check failed: RuntimeError: illegal memory access" in errors[1]
    assert errors[2].startswith("rejected")
    tuner, measure = tuner_with({1: 10.0, 2: 9.9}, monkeypatch)
    checked = []
    assert tuner.choose("op", (), [A, B], measure.calls.append, CPU, lambda config: checked.append(config)) == A
    assert checked == [], "a candidate within the margin is not checked: the default stays"
    tuner, measure = tuner_with({1: 10.0, 2: 5.0, 3: 5.0}, monkeypatch)
    assert tuner.choose("op", (), [A, B, B], measure.calls.append, CPU, lambda config: "wrong") == A, \
        "two equal candidates, both rejected: the loop ends"
    assert [row.get("error", "")[:8] for row in tuner.report()[0]["measured"]] == ["", "rejected", "rejected"]


def test_no_tuning_when_inactive_or_nothing_to_choose(monkeypatch):
    tuner, measure = tuner_with({1: 10.0, 2: 1.0}, monkeypatch, active=False)
    assert tuner.choose("op", (), [A, B], measure.calls.append, CPU) == A
    tuner, measure = tuner_with({1: 10.0}, monkeypatch)
    assert tuner.choose("op", (), [A], measure.calls.append, CPU) == A
    assert measure.calls == [] and tuner.report() == []


def test_when_the_tuner_is_active(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv(envs.HTK_TUNE.name, raising=False)
    assert tune.LaunchTuner.active(torch.device("cuda", 0))
    assert not tune.LaunchTuner.active(CPU)
    monkeypatch.setenv(envs.HTK_TUNE.name, "0")
    assert not tune.LaunchTuner.active(torch.device("cuda", 0))
    monkeypatch.setenv(envs.HTK_TUNE.name, "1")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not tune.LaunchTuner.active(torch.device("cuda", 0)), "never time inside a CUDA-graph capture"
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not tune.LaunchTuner.active(torch.device("cuda", 0))


def test_an_explicit_tuning_bypasses_the_tuner(monkeypatch):
    tuner, measure = tuner_with({1: 10.0, 2: 1.0}, monkeypatch)
    monkeypatch.setattr(tune, "TUNER", tuner)
    defaults = [dict(v=1, w=4), dict(v=2, w=4)]
    assert tune.tuned_config("op", (), defaults, measure.calls.append, CPU, dict(w=8)) == dict(v=1, w=8)
    assert measure.calls == []
    assert tune.tuned_config("op", (), defaults, measure.calls.append, CPU, None) == dict(v=2, w=4)


def test_the_spatial_launcher_under_the_tuner(device, poisoned, monkeypatch):
    """Every candidate is launched while tuning (each into the same output), then the chosen one: the result is
    the reference's, and the choice is what the measure said was fastest."""
    launched = []

    def measure(launch, dev):
        launch()
        launched.append(len(launched))
        return 5.0 if len(launched) == 3 else 10.0  # the third candidate is the fastest

    tuner = tune.LaunchTuner(measure=measure)
    monkeypatch.setattr(tune, "TUNER", tuner)
    monkeypatch.setattr(tune.LaunchTuner, "active", staticmethod(lambda dev: True))
    z, _, weights = spatial_args(1, 5, 6, 16, False, seed=5)
    weights = {k: v.to(device) for k, v in weights.items()}
    actual = adapter_spatial_triton(z.to(device), 5, 6, None, **weights)
    expected = adapter_spatial_ref(z.double(), 5, 6, None, **{k: v.cpu().double() for k, v in weights.items()})
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], "spatial under the tuner")
    candidates = spatial_candidates(1, 5, 6, 16)
    assert len(launched) == len(candidates)
    assert tuner.report()[0]["config"] == candidates[2]


@pytest.mark.parametrize("config", IN_CANDIDATES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_adapter_in_candidate(device, poisoned, config):
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(45, 80, generator=gen) * 2.0 + torch.randn(45, 1, generator=gen) * 20.0
    args = [x, torch.randn(16, 80, generator=gen) * 0.1, torch.randn(16, 80, generator=gen) * 0.1,
            torch.randn(16, generator=gen)]
    actual = adapter_in_triton(*[t.to(device) for t in args], 1e-5, tuning=config)
    assert_relative(actual.cpu(), adapter_in_ref(*[t.double() for t in args], 1e-5), RELATIVE[torch.float32],
                    f"adapter_in {config}")


@pytest.mark.parametrize("config,inner", OUT_CANDIDATES,
                         ids=[f"inner{inner}-" + "-".join(f"{k}{v}" for k, v in c.items()) for c, inner in OUT_CANDIDATES])
def test_every_adapter_out_candidate(device, poisoned, config, inner):
    gen = torch.Generator().manual_seed(32)
    args = [torch.randn(45, inner, generator=gen), torch.randn(136, inner, generator=gen) * inner ** -0.5,
            torch.randn(136, generator=gen), torch.randn(45, 136, generator=gen)]
    actual = adapter_out_triton(*[t.to(device) for t in args], tuning=config)
    assert_relative(actual.cpu(), adapter_out_ref(*[t.double() for t in args]), RELATIVE[torch.float32],
                    f"adapter_out inner {inner} {config}")


@pytest.mark.parametrize("config", SPATIAL_CANDIDATES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_adapter_spatial_candidate(device, poisoned, config):
    z, _, weights = spatial_args(2, 5, 7, 16, False, seed=33)
    weights = {k: v.to(device) for k, v in weights.items()}
    actual = adapter_spatial_triton(z.to(device), 5, 7, None, **weights, tuning=config)
    expected = adapter_spatial_ref(z.double(), 5, 7, None, **{k: v.cpu().double() for k, v in weights.items()})
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"spatial {config}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spectral", [False, True])
def test_split_convolution_low_precision_and_spectral(device, poisoned, dtype, spectral):
    z, filt, weights = spatial_args(2, 5, 6, 16, spectral, seed=34)
    z = z.to(device=device, dtype=dtype)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    filt = None if filt is None else filt.to(device)
    actual = adapter_spatial_triton(z, 5, 6, filt, **weights, tuning=dict(split_conv=True, pool_block=16))
    expected = adapter_spatial_ref(z.cpu().double(), 5, 6, None if filt is None else filt.cpu().double(),
                                   **{k: v.cpu().double() for k, v in weights.items()})
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype], f"spatial split_conv {dtype} spectral={spectral}")


def test_candidate_lists_start_with_the_measured_defaults():
    """The first candidate is what runs without tuning: the configurations measured best on an H100 at batch 1
    (benchmarks/results/gpu-h100-2026-11-27) and the launchers' large-batch tiles."""
    assert in_candidates(197)[0] == dict(block_m=8, block_d=64, num_warps=4, single_pass=False, one_dot=False)
    assert in_candidates(64 * 197)[0] == dict(block_m=64, block_d=64, num_warps=4, single_pass=False, one_dot=False)
    assert spatial_candidates(1, 14, 14, 64)[0] == dict(block_p=16, num_warps=4, pool_block=0, split_conv=False)
    assert spatial_candidates(64, 14, 14, 64)[0] == dict(block_p=32, num_warps=4, pool_block=0, split_conv=False)
    assert out_candidates(197)[0] == dict(impl="triton", block_m=32, block_n=64, num_warps=4, num_stages=3, split_k=1)
    for configs in (in_candidates(197), spatial_candidates(1, 14, 14, 64), out_candidates(50432)):
        assert len(configs) == len(unique(configs)) > 1


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible: the tuner times in CUDA graphs")
def test_the_tuner_times_every_candidate_on_the_gpu(poisoned, monkeypatch):
    monkeypatch.setenv(envs.HTK_TUNE.name, "1")
    tuner = tune.LaunchTuner()
    monkeypatch.setattr(tune, "TUNER", tuner)
    z, _, weights = spatial_args(2, 14, 14, 64, False, seed=35)
    weights = {k: v.cuda() for k, v in weights.items()}
    actual = adapter_spatial_triton(z.cuda(), 14, 14, None, **weights)
    expected = adapter_spatial_ref(z.double(), 14, 14, None, **{k: v.cpu().double() for k, v in weights.items()})
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], "spatial tuned on the GPU")
    (choice,) = tuner.report()
    assert len(choice["measured"]) == len(spatial_candidates(2, 14, 14, 64))
    assert all(row.get("us", 0.0) > 0.0 for row in choice["measured"]), choice["measured"]
    assert choice["config"] in spatial_candidates(2, 14, 14, 64)


def test_cold_timing_flushes_twice_the_l2_and_subtracts_the_flushes():
    """The parts of cold timing that need no GPU: the flush size (twice the L2 the card reports, an H100's where it
    reports none) and the per-launch time from paired replays (median difference; never below zero)."""
    assert tune.l2_flush_bytes(60 * 2**20) == 120 * 2**20
    assert tune.l2_flush_bytes(0) == 2 * tune.FALLBACK_L2_BYTES == 100 * 2**20
    # 10 launches: replays of (flush, launch)×10 against flush×10, in ms; one outlier pair does not move the median.
    timed, flushes = [0.50, 0.52, 0.49, 0.90, 0.51], [0.35, 0.36, 0.35, 0.36, 0.35]
    assert tune.cold_us(timed, flushes, 10) == pytest.approx(16.0)  # differences 0.14 0.15 0.16 0.16 0.54
    assert tune.cold_us([0.35, 0.34, 0.35], [0.36, 0.36, 0.36], 10) == 0.0


def test_cold_timing_is_a_declared_setting(monkeypatch):
    assert envs.HTK_TUNE_COLD_L2 in envs.SETTINGS and envs.HTK_TUNE_COLD_L2.get() is True
    monkeypatch.setenv("HTK_TUNE_COLD_L2", "0")
    assert envs.HTK_TUNE_COLD_L2.get() is False
