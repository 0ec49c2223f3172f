"""`ht-engine bench`: FLOP counter, measurement core, report schema, correctness column, unsupported precisions."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from engine.backends import BACKEND_MODULES
from engine.bench import (
    BenchOptions,
    LatencyStats,
    PeakMemory,
    count_flops,
    format_table,
    gemm_rate,
    run_bench,
    time_calls,
)
from engine.bench.flops import dft_filter_flops
from engine.bench.machine import git_state, machine_info, short_sha
from engine.bench.measure import (
    relative_error,
    short_percentiles,
    split_summary,
    time_interleaved,
    time_split_calls,
)
from engine.bench.report import (
    ReportError,
    anchor_notes,
    format_frames_table,
    format_markdown,
    times_document,
    validate_report,
    write_plot,
)
from engine.bench.suite import gpu_split, split_unavailable
from engine.cli import main
from engine.config import ModelConfig
from engine.export.openvino import cpu_has_bf16
from engine.model import build_reference_model
from engine.package import save_package
from engine.postprocess import results_from_logits
from engine.preprocess import preprocess_frames
from engine.runner import Runner

from .fake_tensorrt import MIB, FakeCudart, fake_artifact, patch_tensorrt
from .helpers import random_images, small_config, small_tensors
from .tolerances import RELATIVE

pytest.importorskip("jsonschema", reason="the bench schema tests need jsonschema (pip install -e '.[dev]')")


# ---------------------------------------------------------------- FLOP counter

@pytest.mark.parametrize("arch, task, filter_kind", [
    ("biomedclip-vit-b16", "seg", "channel"), ("openai-clip-vit-b16", "seg", "spectral"),
    ("openai-clip-vit-b16", "cls", "channel"), ("biomedclip-vit-b16", "cls", "spectral")])
def test_reference_flops_equal_torch_flop_counter(arch, task, filter_kind):
    """The unpruned count equals torch's FLOP counter on the eager reference, plus what that counter does not see:
    the FFT filter (counted as dense DFT products) and the bilinear upsample (4 taps per output pixel)."""
    cfg = small_config(arch, task, filter_kind, num_classes=3)
    model = build_reference_model(cfg, small_tensors(cfg))
    batch = 2
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        model(random_images(batch, cfg.image_size, seed=5))
    measured = counter.get_total_flops() // batch
    unseen = len(cfg.adapter_layers) * cfg.bottleneck * dft_filter_flops(cfg.grid, cfg.grid)
    if task == "seg":
        unseen += 2 * 4 * cfg.image_size ** 2 * cfg.head_dim
    assert count_flops(cfg, pruned=False).total == measured + unseen


def test_pruned_flops_count_only_live_blocks():
    cfg = small_config("biomedclip-vit-b16", extract_layers=[0, 1], adapter_layers=[0, 1, 2, 3])
    live = dataclasses.replace(cfg, layers=2, adapter_layers=[0, 1])
    pruned, full = count_flops(cfg, pruned=True), count_flops(cfg, pruned=False)
    assert pruned.blocks == 2 and full.blocks == 4
    assert pruned.attention == count_flops(live, pruned=False).attention == full.attention // 2
    assert pruned.mlp == full.mlp // 2
    # Two live adapters, each without the FFT and with one merged 7x7 conv instead of 3x3 + 5x5 + 7x7.
    r, pixels = cfg.bottleneck, cfg.grid ** 2
    per_adapter_saving = r * dft_filter_flops(cfg.grid, cfg.grid) + 2 * r * pixels * (9 + 25)
    assert pruned.adapters == 2 * (full.adapters // 4 - per_adapter_saving)


def test_seg_head_rewrite_runs_the_classifier_before_the_upsample():
    cfg = small_config("biomedclip-vit-b16", "seg", num_classes=3)
    pruned, full = count_flops(cfg, pruned=True), count_flops(cfg, pruned=False)
    size2, dim, pixels, levels = cfg.image_size ** 2, cfg.head_dim, cfg.grid ** 2, len(cfg.extract_layers)
    # Reference: third level linear (dim→dim) per level, upsample of dim channels, 1x1 conv at full resolution.
    # Rewritten: that linear and the 1x1 conv folded into one dim→C per level, upsample of C channels.
    saved = levels * 2 * pixels * dim * (dim - 3) + 2 * 4 * size2 * (dim - 3) + 2 * size2 * dim * 3
    assert full.heads - pruned.heads == saved


def test_full_size_seg_count_matches_the_design_card():
    """Design card §7: the seg model needs ≈ 30.5 GFLOP per frame after pruning (10 of 12 blocks)."""
    cfg = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2)
    pruned = count_flops(cfg, pruned=True)
    assert pruned.blocks == 10
    assert abs(pruned.total / 1e9 - 30.5) < 0.05, pruned.to_dict()
    assert count_flops(cfg, pruned=False).total > pruned.total * 1.15


# ---------------------------------------------------------------- measurement core

def test_time_calls_warms_up_once_then_runs_the_iterations():
    calls = []
    samples = time_calls(lambda: calls.append(1), timer="perf_counter_ns", warmup_s=0.0, duration_s=0.0,
                         iterations=7)
    assert len(samples) == 7 and len(calls) == 8  # a zero warm-up is still one untimed call
    assert all(s >= 0 for s in samples)
    capped = time_calls(lambda: None, timer="perf_counter_ns", warmup_s=0.0, duration_s=60.0, max_runs=5)
    assert len(capped) == 5


def test_time_calls_warmup_is_seconds_and_duration_and_iterations_both_hold():
    stamps = []

    def call():
        stamps.append(time.perf_counter())
        time.sleep(0.002)

    started = time.perf_counter()
    samples = time_calls(call, timer="perf_counter_ns", warmup_s=0.05, duration_s=0.0, iterations=3)
    untimed = stamps[:-3]
    assert len(samples) == 3 and len(untimed) >= 2  # 2 ms calls: more than one fits in 50 ms
    assert stamps[-3] - started >= 0.05  # the first timed call starts after the warm-up seconds
    stamps.clear()
    started = time.perf_counter()
    long = time_calls(call, timer="perf_counter_ns", warmup_s=0.0, duration_s=0.05, iterations=2)
    assert len(long) > 2 and time.perf_counter() - started >= 0.05  # the duration is the longer condition here
    many = time_calls(call, timer="perf_counter_ns", warmup_s=0.0, duration_s=0.01, iterations=20)
    assert len(many) == 20  # 20 runs of 2 ms outlast 10 ms: here the iterations are the longer condition


def test_latency_stats_percentiles():
    rng = np.random.default_rng(3)
    samples = rng.gamma(2.0, 3.0, size=501)
    stats = LatencyStats.from_samples(samples, (90, 99, 99.9))
    ordered = np.sort(samples)
    assert stats.runs == 501
    assert stats.median_ms == ordered[250]  # odd count: the middle sample exactly
    assert list(stats.percentiles_ms) == ["p90_ms", "p99_ms", "p99.9_ms"]
    assert stats.percentiles_ms["p90_ms"] == pytest.approx(ordered[450])
    assert stats.percentiles_ms["p99_ms"] == pytest.approx(ordered[495])
    assert stats.max_ms == ordered[-1] and stats.min_ms == ordered[0]
    assert stats.mean_ms == pytest.approx(samples.mean())
    # p90 needs 10 runs, p99 100, p99.9 1000; the max (p100) is exact from any count.
    assert short_percentiles(stats.to_dict()) == [("p99.9_ms", 1000)]
    assert short_percentiles(LatencyStats.from_samples(samples[:99], (90, 99, 100)).to_dict()) == [("p99_ms", 100)]
    assert short_percentiles(LatencyStats.from_samples(samples[:9], (90, 100)).to_dict()) == [("p90_ms", 10)]
    assert short_percentiles(LatencyStats.from_samples(rng.gamma(2.0, 3.0, size=100), (50, 99)).to_dict()) == []
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_relative_error_of_tensors_arrays_and_both():
    generator = torch.Generator().manual_seed(5)
    expected = torch.randn(3, 7, 5, generator=generator, dtype=torch.float64)
    actual = expected + 1e-3 * torch.randn(3, 7, 5, generator=generator, dtype=torch.float64)
    truth = float((actual - expected).abs().max() / expected.abs().max())
    assert relative_error(actual, expected) == truth
    assert relative_error(actual.numpy(), expected.numpy()) == truth
    assert relative_error(actual.numpy(), expected) == relative_error(actual, expected.numpy()) == truth
    # Low precision is measured in float64: the bf16 rounding shows, not a bf16 rounding of the error itself.
    rounded = expected.to(torch.bfloat16)
    assert relative_error(rounded, expected) == float((rounded.double() - expected).abs().max() / expected.abs().max())
    assert relative_error(actual.transpose(0, 2), expected.transpose(0, 2)) == truth  # non-contiguous


def test_relative_error_refuses_a_broadcast_and_flags_non_finite_outputs():
    expected = torch.rand(2, 3) + 0.5
    with pytest.raises(ValueError, match=r"shape \(3,\) against shape \(2, 3\)"):
        relative_error(expected[0], expected)
    poisoned = expected.clone()
    poisoned[1, 2] = float("nan")
    assert not np.isfinite(relative_error(poisoned, expected))
    poisoned[1, 2] = float("inf")
    assert not np.isfinite(relative_error(poisoned, expected))
    assert relative_error(np.zeros(4), np.zeros(4)) == 0.0


def test_machine_info_records_the_commit_and_the_declared_settings(monkeypatch):
    monkeypatch.setenv("HTK_TUNE", "0")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.delenv("HT_ENGINE_COMPILE", raising=False)
    info = machine_info("cpu")
    assert info["environment"]["HTK_TUNE"] == "0" and info["environment"]["OPENBLAS_NUM_THREADS"] == "2"
    assert "HT_ENGINE_COMPILE" not in info["environment"]
    state = git_state()
    assert info["git"]["sha"] == state["sha"]
    assert state["sha"] is None or (len(state["sha"]) == 40 and short_sha(state["sha"]) == state["sha"][:10])
    assert short_sha(None) == "unknown"


def test_peak_memory_sees_a_transient_allocation():
    import mmap

    memory = PeakMemory("cpu")
    memory.reset()
    before = memory.current()
    # Fresh anonymous pages, each touched so it is resident: a malloc'd block could reuse pages an allocator kept
    # resident from earlier tests (OpenVINO's TBB allocator does), and then nothing new would be resident.
    size = 48 * 2**20
    with mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
    assert memory.peak() - before >= 40 * 2**20


def test_gemm_rate_reports_peak_and_median():
    rate = gemm_rate("fp32", "cpu", size=96, duration_s=0.0)
    assert rate["size"] == 96 and rate["runs"] >= 3
    assert rate["min_ms"] <= rate["median_ms"]
    assert rate["gflops"] == pytest.approx(2 * 96 ** 3 / (rate["min_ms"] * 1e6))
    assert rate["gflops"] >= rate["median_gflops"] > 0


# ---------------------------------------------------------------- the suite

def test_time_interleaved_alternates_the_contenders_round_by_round():
    order = []
    contenders = [(lambda name=name: order.append(name), "perf_counter_ns") for name in "abc"]
    series = time_interleaved(contenders, warmup_s=0.0, duration_s=0.0, iterations=4)
    assert [len(samples) for samples in series] == [4, 4, 4]
    assert order[:3] == ["a", "b", "c"]  # one untimed warm-up call each, in order
    assert order[3:] == ["a", "b", "c"] * 4  # then every round times one call of each
    assert time_interleaved([], warmup_s=0.0, duration_s=1.0) == []


def test_time_interleaved_gives_each_contender_its_duration():
    def slow():
        time.sleep(0.004)

    started = time.perf_counter()
    fast, slower = time_interleaved([(lambda: None, "perf_counter_ns"), (slow, "perf_counter_ns")], warmup_s=0.0,
                                    duration_s=0.02, iterations=1)
    assert time.perf_counter() - started >= 0.04  # duration_s per contender: 2 x 20 ms
    assert len(fast) == len(slower) >= 2
    assert min(slower) >= 4.0 > max(fast)  # each sample is its own contender's call


@pytest.fixture(scope="module", autouse=True)
def eager_optimized_backend():
    """The optimized CPU backend compiles on load; these tests are about the bench, not the compiler (its own tests
    cover it), so it runs eagerly here and the suite stays fast on a cold compile cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HT_ENGINE_COMPILE", "0")
        yield


@pytest.fixture(scope="module")
def small_package(tmp_path_factory):
    cfg = small_config("biomedclip-vit-b16", "seg", num_classes=3)
    path = tmp_path_factory.mktemp("bench") / "small.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=2))
    return path


def fast_options(package, **overrides) -> BenchOptions:
    fields = dict(source=package, precisions=["fp32"], batches=[1, 2], duration_s=0.0, warmup_s=0.0, iterations=1,
                  compiled_baseline=False, anchor=False, gemm_size=64, gemm_duration_s=0.0)
    fields.update(overrides)
    return BenchOptions(**fields)


def _fake_backend(transform=None, fail_at_run: bool = False) -> types.ModuleType:
    """A registry module whose runner returns the eager reference's output through `transform`."""
    module = types.ModuleType("fake_bench_backend")

    def available(device):
        return True, ""

    def load(package, device, precision):
        if precision != "fp32":
            from engine.errors import BackendError

            raise BackendError(f"fake backend runs fp32 only, not {precision}")
        model = build_reference_model(package.config, package.tensors)

        @torch.inference_mode()
        def run(batch):
            if fail_at_run:
                raise RuntimeError("kernel launch failed")
            return transform(model(batch))

        return Runner(run=run, uses_torch=True, device="cpu", precision=precision)

    module.available, module.load = available, load
    return module


def _cases(report, backend):
    return [case for case in report["cases"] if case["backend"] == backend]


@pytest.fixture(scope="module")
def report(small_package):
    return run_bench(fast_options(small_package, backends=["reference", "optimized"], precisions=["fp32", "bf16"],
                                  iterations=2, anchor=True))


def test_report_validates_and_lists_every_case_with_its_correctness(report):
    validate_report(report)
    json.dumps(report, allow_nan=False)
    assert report["machine"]["environment"]["HT_ENGINE_COMPILE"] == "0"  # set by the fixture above
    assert report["flops_per_frame"]["pruned"]["total"] < report["flops_per_frame"]["reference"]["total"]
    seen = {(c["backend"], c["precision"], c["batch"]): c for c in report["cases"]}
    expected = {(b, p, n) for b in ("reference", "optimized", "openvino-reference") for p in ("fp32", "bf16")
                for n in (1, 2)}
    assert set(seen) == expected and len(report["cases"]) == len(expected)
    for batch in (1, 2):
        eager = seen[("reference", "fp32", batch)]
        assert eager["role"] == "eager" and eager["status"] == "ok" and eager["max_rel_error"] == 0.0
        assert eager["speedup_vs_eager"] == pytest.approx(1.0)
        optimized = seen[("optimized", "fp32", batch)]
        assert optimized["status"] == "ok", optimized["message"]
        assert 0.0 <= optimized["max_rel_error"] <= RELATIVE[torch.float32]
        assert optimized["latency_ms"]["runs"] >= 2 and optimized["throughput_fps"] > 0
        assert optimized["gemm_precision"] == "fp32" and optimized["gemm_fraction"] > 0
        assert optimized["peak_memory_bytes"] > 0 and optimized["first_load_s"] >= optimized["load_s"] > 0
        bf16 = seen[("optimized", "bf16", batch)]
        assert bf16["status"] == "ok" and 0.0 < bf16["max_rel_error"] <= RELATIVE[torch.bfloat16]
        anchor = seen[("openvino-reference", "fp32", batch)]
        assert anchor["role"] == "anchor" and anchor["status"] == "ok", anchor["message"]
        assert 0.0 < anchor["max_rel_error"] <= RELATIVE[torch.float32]
        assert optimized["time_vs_openvino_reference"]["fp32"] == pytest.approx(
            optimized["latency_ms"]["median_ms"] / anchor["latency_ms"]["median_ms"])
        anchor_bf16 = seen[("openvino-reference", "bf16", batch)]
        if cpu_has_bf16():
            assert anchor_bf16["status"] == "ok" and 0.0 < anchor_bf16["max_rel_error"] <= RELATIVE[torch.bfloat16]
            assert set(optimized["time_vs_openvino_reference"]) == {"fp32", "bf16"}
        else:
            assert anchor_bf16["status"] == "unsupported" and "no bf16 units" in anchor_bf16["message"]
    unsupported = seen[("reference", "bf16", 1)]
    assert unsupported["status"] == "unsupported" and "fp32" in unsupported["message"]
    assert unsupported["latency_ms"] is None and unsupported["max_rel_error"] is None
    table = format_table(report)
    rows = [line for line in table.splitlines() if not line.startswith(("warning: ", "note: "))]
    assert len(rows) == len(report["cases"]) + 2
    assert "unsupported: backend 'reference' runs in" in table
    # A CPU run has no host/device split: null in every case, with why, no split columns, one note naming the cases.
    assert all(case["gpu_split_ms"] is None for case in report["cases"])
    timed = [case for case in report["cases"] if case["latency_ms"] is not None]
    assert {case["gpu_split_reason"] for case in timed} == {split_unavailable("cpu", _numpy_runner("cpu"))}
    assert "Host Latency ms" not in rows[0]
    (note,) = [line for line in table.splitlines() if "Host Latency" in line]
    labels = ", ".join(dict.fromkeys(f"{case['backend']} {case['precision']}" for case in timed))
    assert labels.startswith("reference fp32, openvino-reference fp32") and labels.endswith("optimized bf16")
    assert note.startswith(f"note: no Host Latency / GPU Compute split for {labels}: measured for artifact "
                           f"runtimes on a GPU only")
    assert "perf_counter_ns" in note
    # Where the backends stand against OpenVINO on the reference model: one note per batch and pick.
    anchored = [line for line in table.splitlines() if line.startswith("note: batch ")]
    fastest = "fastest with masks >= 99%"  # a seg model: the pick must keep the fp32 masks
    assert [line.split(" backend ")[0] for line in anchored] == [
        f"note: batch 1: {fastest}", "note: batch 1: fastest fp32", f"note: batch 2: {fastest}",
        "note: batch 2: fastest fp32"]
    assert all("x OpenVINO(reference) fp32" in line and ", masks " in line for line in anchored)


def test_one_class_eager_masks_are_a_warning():
    from engine.bench.suite import mask_warnings

    (warning,) = mask_warnings({1: 0.42, 8: 0.995})
    assert warning["kind"] == "one_class_masks" and warning["batch"] == 8 and "99.50%" in warning["message"]


def test_mask_agreement_is_measured_and_the_fastest_pick_keeps_the_masks(report):
    seen = {(c["backend"], c["precision"], c["batch"]): c for c in report["cases"]}
    assert seen[("reference", "fp32", 1)]["mask_agreement"] == 1.0
    optimized = seen[("optimized", "fp32", 1)]
    assert optimized["mask_agreement"] >= 0.999  # fp32: equal but for float ties
    bf16 = seen[("optimized", "bf16", 1)]
    assert 0.5 < bf16["mask_agreement"] <= 1.0
    # a faster case whose masks disagree is not the pick; the fp32 pick is unaffected
    doctored = copy.deepcopy(report)
    fast_wrong = next(c for c in doctored["cases"] if (c["backend"], c["precision"], c["batch"]) ==
                      ("optimized", "bf16", 1))
    fast_wrong["latency_ms"]["median_ms"] = 1e-3
    fast_wrong["mask_agreement"] = 0.5
    (line,) = [note for note in anchor_notes(doctored) if note.startswith("batch 1: fastest with")]
    assert " bf16 " not in line.split(" = ")[0]
    fast_wrong["mask_agreement"] = 0.995
    (line,) = [note for note in anchor_notes(doctored) if note.startswith("batch 1: fastest with")]
    assert line.startswith("batch 1: fastest with masks >= 99% backend optimized bf16 0.00 ms")
    # an anchor whose own masks miss the bar is named; one that meets it is not
    anchors = [c for c in doctored["cases"] if c["role"] == "anchor" and c["status"] == "ok" and c["batch"] == 1]
    assert anchors
    for anchor in anchors:
        anchor["mask_agreement"] = 0.995
    assert not any("the anchor itself" in note for note in anchor_notes(doctored))
    anchors[0]["mask_agreement"] = 0.985
    (line,) = [note for note in anchor_notes(doctored) if "the anchor itself" in note]
    assert line.startswith(f"batch 1: the anchor itself, {anchors[0]['backend']} {anchors[0]['precision']}, has masks "
                           "0.9850 < 99%")


# ---------------------------------------------------------------- host/device split (gpu_split_ms)

def _numpy_runner(device: str, run_split=None) -> Runner:
    return Runner(run=lambda batch: batch, uses_torch=False, device=device, precision="fp16", run_split=run_split,
                  split_timer=None if run_split is None else "cuda_events")


def test_split_is_measured_only_for_runners_that_split_on_a_gpu():
    def splitting(batch):
        return batch, (0.1, 1.0, 0.05)

    assert "on a GPU only" in split_unavailable("cpu", _numpy_runner("cpu", splitting))
    torch_runner = Runner(run=lambda batch: batch, uses_torch=True, device="cuda", precision="fp32")
    assert "CUDA events around the call (cuda_events)" in split_unavailable("cuda", torch_runner)
    assert "does not split its calls" in split_unavailable("cuda:1", _numpy_runner("cuda:1"))
    assert split_unavailable("cuda:1", _numpy_runner("cuda:1", splitting)) is None


def test_time_split_calls_follows_the_timing_rule():
    calls = []

    def call_split():
        calls.append(1)
        return None, (len(calls), 2 * len(calls), 0.5)

    samples = time_split_calls(call_split, warmup_s=0.0, duration_s=0.0, iterations=4)
    assert samples == [(2.0, 4.0, 0.5), (3.0, 6.0, 0.5), (4.0, 8.0, 0.5), (5.0, 10.0, 0.5)]  # after one warm-up call
    assert len(time_split_calls(call_split, warmup_s=0.0, duration_s=60.0, max_runs=3)) == 3


def test_split_summary_has_each_phase_and_their_sum_per_run():
    samples = [(0.2, 5.0, 0.1), (0.4, 3.0, 0.1), (0.3, 4.0, 0.4)]
    summary = split_summary(samples, "cuda_events", percentiles=(50, 90))
    assert summary["timer"] == "cuda_events" and summary["runs"] == 3
    assert summary["h2d_ms"]["median_ms"] == pytest.approx(0.3) and summary["h2d_ms"]["max_ms"] == pytest.approx(0.4)
    assert summary["compute_ms"]["min_ms"] == 3.0 and summary["compute_ms"]["p90_ms"] == pytest.approx(4.8)
    assert summary["d2h_ms"]["mean_ms"] == pytest.approx(0.2)
    # Host Latency per run: 5.3, 3.5, 4.7 (trtexec's H2D + GPU Compute + D2H), not a sum of the phase medians (4.4).
    assert summary["host_latency_ms"]["median_ms"] == pytest.approx(4.7)
    assert summary["host_latency_ms"]["min_ms"] == pytest.approx(3.5)
    assert summary["samples_ms"] == [list(run) for run in samples]
    assert all(summary[key]["runs"] == 3 for key in ("h2d_ms", "compute_ms", "d2h_ms", "host_latency_ms"))
    with pytest.raises(ValueError):
        split_summary([], "cuda_events")


def _tensorrt_runner(tmp_path, monkeypatch, compute_ms):
    from engine.backends import tensorrt

    cudart = FakeCudart(h2d_ms_per_mib=2.0, d2h_ms_per_mib=0.5, compute_ms=compute_ms)
    patch_tensorrt(monkeypatch, cudart)
    return tensorrt.load(fake_artifact(tmp_path, max_batch=8), "cuda", "fp16")


def test_tensorrt_runner_split_is_summarized_from_its_events(small_package, tmp_path, monkeypatch):
    """The TensorRT runner on fakes (tests/fake_tensorrt.py: every phase costs a known device time): the suite's
    split holds exactly those times, run by run, and the statistics over them."""
    runner = _tensorrt_runner(tmp_path, monkeypatch, compute_ms=(4.0, 6.0, 8.0, 10.0, 12.0))
    images = random_images(2, 20, seed=4).numpy()
    options = fast_options(small_package, iterations=5, percentiles=[50, 99])
    split, reason = gpu_split(runner, images, "cuda", options)
    assert reason is None and split["timer"] == "cuda_events" and split["runs"] == 5
    h2d, d2h = 2.0 * images.nbytes / MIB, 0.5 * (images.nbytes * 2 // 3) / MIB
    computes = [6.0, 8.0, 10.0, 12.0, 4.0]  # the warm-up call ran the first 4 ms
    assert split["samples_ms"] == [[round(h2d, 4), c, round(d2h, 4)] for c in computes]
    assert split["h2d_ms"]["median_ms"] == pytest.approx(h2d) and split["d2h_ms"]["max_ms"] == pytest.approx(d2h)
    assert split["compute_ms"]["median_ms"] == pytest.approx(8.0) and split["compute_ms"]["min_ms"] == 4.0
    assert split["host_latency_ms"]["median_ms"] == pytest.approx(h2d + 8.0 + d2h)
    assert split["host_latency_ms"]["p99_ms"] == pytest.approx(h2d + d2h + np.percentile(computes, 99))
    assert gpu_split(runner, images, "cpu", options)[0] is None  # the device decides before the runner


def test_a_failing_split_loses_only_the_split(small_package):
    def broken(batch):
        raise RuntimeError("cudaErrorLaunchFailure")

    split, reason = gpu_split(_numpy_runner("cuda", broken), np.zeros(1), "cuda", fast_options(small_package))
    assert split is None and reason == "the split runs failed: RuntimeError: cudaErrorLaunchFailure"


def _with_split(report, tmp_path, monkeypatch, small_package) -> dict:
    """`report` with its optimized fp32 cases given the split of the TensorRT runner on fakes."""
    runner = _tensorrt_runner(tmp_path, monkeypatch, compute_ms=(7.0,))
    split_report = json.loads(json.dumps(report))
    for case in split_report["cases"]:
        if case["backend"] == "optimized" and case["precision"] == "fp32":
            images = random_images(case["batch"], 20, seed=case["batch"]).numpy()
            case["gpu_split_ms"], case["gpu_split_reason"] = gpu_split(
                runner, images, "cuda", fast_options(small_package, iterations=3, percentiles=[50, 90, 95, 99]))
    return split_report


def test_report_with_a_split_validates_and_the_table_shows_host_latency_and_gpu_compute(
        report, small_package, tmp_path, monkeypatch):
    split_report = _with_split(report, tmp_path, monkeypatch, small_package)
    validate_report(split_report)
    table = format_table(split_report).splitlines()
    header = table[0].split()
    assert "Latency" in header and "Compute" in header and len(table[0]) == len(table[1])
    with_split = [c for c in split_report["cases"] if c["gpu_split_ms"] is not None]
    assert len(with_split) == 2
    for case in with_split:
        (row,) = [line for line in table[2:] if line.startswith("optimized") and line.split()[1:3] == [
            "fp32", str(case["batch"])]]
        host, compute = case["gpu_split_ms"]["host_latency_ms"]["median_ms"], 7.0
        assert f"{host:.3f}" in row.split() and f"{compute:.3f}" in row.split()
    notes = [line for line in table if line.startswith("note: ")]
    assert notes[0].startswith("note: Host Latency = H2D + GPU Compute + D2H of each run") and "optimized fp32" in \
        notes[0] and "CUDA events on the runner's execution stream" in notes[0]
    anchors = "openvino-reference fp32, openvino-reference bf16, " if cpu_has_bf16() else "openvino-reference fp32, "
    assert notes[1].startswith(f"note: no Host Latency / GPU Compute split for reference fp32, {anchors}"
                               f"optimized bf16:")
    markdown = format_markdown(split_report)
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert "| Host Latency ms | GPU Compute ms |" in rows[0]
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    times = times_document(split_report)["cases"]
    assert [c["split_samples_ms"] is not None for c in times] == [c["gpu_split_ms"] is not None
                                                                   for c in split_report["cases"]]
    assert all(len(c["split_samples_ms"]) == 3 and c["split_timer"] == "cuda_events" for c in times
               if c["split_samples_ms"] is not None)


def test_schema_checks_the_split(report, small_package, tmp_path, monkeypatch):
    split_report = _with_split(report, tmp_path, monkeypatch, small_package)
    index = next(i for i, c in enumerate(split_report["cases"]) if c["gpu_split_ms"] is not None)

    def broken(edit):
        copy = json.loads(json.dumps(split_report))
        edit(copy["cases"][index])
        with pytest.raises(ReportError, match=f"cases/{index}"):
            validate_report(copy)

    broken(lambda case: case.update(gpu_split_reason="also a reason"))  # measured: no reason
    broken(lambda case: case.update(gpu_split_ms=None))  # null: a reason is needed
    broken(lambda case: case["gpu_split_ms"].pop("host_latency_ms"))
    broken(lambda case: case["gpu_split_ms"].update(timer="wall"))
    broken(lambda case: case["gpu_split_ms"]["samples_ms"][0].pop())
    broken(lambda case: case["gpu_split_ms"]["compute_ms"].pop("median_ms"))
    broken(lambda case: case.pop("gpu_split_reason"))


def _few_samples(report) -> list:
    return [warning for warning in report["warnings"] if warning["kind"] == "few_samples"]


def test_requested_percentiles_and_run_counts_are_reported_and_few_runs_are_flagged(small_package):
    few = run_bench(fast_options(small_package, backends=["reference"], batches=[1], iterations=5,
                                 percentiles=[50, 75, 99.9]))
    validate_report(few)
    (case,) = few["cases"]
    assert few["settings"]["percentiles"] == [50, 75, 99.9] and few["settings"]["iterations"] == 5
    assert set(case["latency_ms"]) == {"runs", "min_ms", "mean_ms", "median_ms", "max_ms", "p50_ms", "p75_ms",
                                       "p99.9_ms"}
    assert case["latency_ms"]["runs"] == len(case["samples_ms"]) >= 5  # --duration 0: the iterations decide
    assert case["latency_ms"]["min_ms"] <= case["latency_ms"]["p50_ms"] <= case["latency_ms"]["p99.9_ms"]
    (warning,) = _few_samples(few)
    # 5 runs: p50 needs 2 and p75 4 (enough), p99.9 needs 1000: only it is flagged, in the JSON and under the table.
    assert warning["backend"] == "reference" and warning["batch"] == 1
    assert "p99.9 needs 1000" in warning["message"] and "p50" not in warning["message"]
    assert f"warning: {warning['message']}" in format_table(few)
    assert "p75 ms" in format_table(few) and "p90 ms" not in format_table(few)
    enough = run_bench(fast_options(small_package, backends=["reference"], batches=[1], iterations=10,
                                    percentiles=[50, 90]))
    validate_report(enough)
    assert enough["cases"][0]["latency_ms"]["runs"] >= 10 and _few_samples(enough) == []
    stale = json.loads(json.dumps(enough))
    stale["cases"][0]["latency_ms"]["p50"] = 1.0  # not a percentile key
    with pytest.raises(ReportError, match="latency_ms"):
        validate_report(stale)


def test_load_average_above_the_cores_is_a_warning(small_package, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * (os.cpu_count() or 1), 0.0, 0.0))
    report = run_bench(fast_options(small_package, backends=["reference"], batches=[1]))
    validate_report(report)
    loaded = [warning for warning in report["warnings"] if warning["kind"] == "load_average"]
    assert len(loaded) == 2 and "start" in loaded[0]["message"] and "end" in loaded[1]["message"]


def test_third_party_warnings_go_to_the_report_not_the_console(small_package, monkeypatch, capsys):
    import logging
    import warnings

    def noisy(transform):
        module = _fake_backend(transform)
        load = module.load

        def noisy_load(package, device, precision):
            warnings.warn("inductor: falling back to eager", UserWarning, stacklevel=1)
            logging.getLogger("torch._inductor.fake").warning("cudagraphs skipped")
            return load(package, device, precision)

        module.load = noisy_load
        return module

    monkeypatch.setitem(sys.modules, "fake_noisy", noisy(lambda y: y))
    monkeypatch.setitem(BACKEND_MODULES, "fake_noisy", "fake_noisy")
    report = run_bench(fast_options(small_package, backends=["fake_noisy"], batches=[1, 2]))
    validate_report(report)
    captured = capsys.readouterr()
    assert "falling back" not in captured.out + captured.err and "cudagraphs" not in captured.out + captured.err
    entries = {(e["source"], e["category"], e["message"]): e["count"] for e in report["third_party_warnings"]}
    assert entries[("warnings", "UserWarning", "inductor: falling back to eager")] == 1
    assert entries[("logging", "torch._inductor.fake", "cudagraphs skipped")] == 1
    assert "kept off the console" in format_table(report)


def test_a_fast_wrong_backend_cannot_hide_and_a_crash_does_not_stop_the_run(small_package, monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_wrong", _fake_backend(lambda y: y * 1.25))
    monkeypatch.setitem(sys.modules, "fake_crash", _fake_backend(fail_at_run=True))
    monkeypatch.setitem(sys.modules, "fake_nan", _fake_backend(lambda y: y.masked_fill(y > y.median(), np.nan)))
    for name in ("fake_wrong", "fake_crash", "fake_nan"):
        monkeypatch.setitem(BACKEND_MODULES, name, name)
    report = run_bench(fast_options(small_package, backends=["fake_crash", "fake_wrong", "fake_nan"],
                                    precisions=["fp32", "fp16"], batches=[2]))
    validate_report(report)
    wrong = _cases(report, "fake_wrong")
    assert [c["precision"] for c in wrong] == ["fp32", "fp16"]
    assert wrong[0]["status"] == "ok" and wrong[0]["max_rel_error"] == pytest.approx(0.25, rel=1e-5)
    assert wrong[1]["status"] == "unsupported" and "fp32 only" in wrong[1]["message"]
    crash = _cases(report, "fake_crash")[0]
    assert crash["status"] == "error" and "kernel launch failed" in crash["message"]
    nan = _cases(report, "fake_nan")[0]
    assert nan["status"] == "error" and nan["max_rel_error"] is None and "NaN" in nan["message"]


def test_unknown_backend_is_refused_with_the_known_names(small_package):
    from engine.errors import BackendError

    with pytest.raises(BackendError, match="unknown backend 'tensorrtt'.*reference"):
        run_bench(fast_options(small_package, backends=["tensorrtt"], batches=[1]))


def test_interleaved_report_has_the_same_cases_each_timed_in_the_same_rounds(small_package):
    report = run_bench(fast_options(small_package, backends=["reference", "optimized"], iterations=3,
                                    interleave=True))
    validate_report(report)
    assert report["settings"]["interleave"] is True
    seen = {(c["backend"], c["precision"], c["batch"]): c for c in report["cases"]}
    assert set(seen) == {(b, "fp32", n) for b in ("reference", "optimized") for n in (1, 2)}
    for batch in (1, 2):
        eager, optimized = seen[("reference", "fp32", batch)], seen[("optimized", "fp32", batch)]
        assert eager["status"] == optimized["status"] == "ok", optimized["message"]
        assert eager["max_rel_error"] == 0.0 and 0.0 <= optimized["max_rel_error"] <= RELATIVE[torch.float32]
        # duration 0: exactly `iterations` rounds, one sample of each case per round
        assert len(eager["samples_ms"]) == len(optimized["samples_ms"]) == 3
        assert optimized["peak_memory_bytes"] is None and optimized["memory_kind"] is None
        assert optimized["speedup_vs_eager"] > 0


def test_cli_bench_interleave_flag_reaches_the_report(small_package, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", str(small_package), "--backends", "reference", "--batch", "1", "--duration", "0",
               "--warmup", "0", "--iterations", "2", "--no-compile", "--no-anchor", "--gemm-size", "64",
               "--interleave", "--json", str(out)])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["settings"]["interleave"] is True and "round-robin" in capsys.readouterr().out


def test_time_limit_skips_cases_not_yet_started(small_package):
    report = run_bench(fast_options(small_package, backends=["optimized"], batches=[1], time_limit_s=1e-9))
    validate_report(report)
    assert {c["status"] for c in report["cases"]} == {"skipped"}
    assert all("time limit" in c["message"] for c in report["cases"])


def test_schema_rejects_a_broken_report(report):
    broken = json.loads(json.dumps(report))
    broken["cases"][0]["status"] = "fast"
    with pytest.raises(ReportError, match="cases/0/status"):
        validate_report(broken)
    missing = json.loads(json.dumps(report))
    del missing["cases"][0]["max_rel_error"]
    with pytest.raises(ReportError, match="max_rel_error"):
        validate_report(missing)
    timed_without_latency = json.loads(json.dumps(report))
    timed_without_latency["cases"][0]["latency_ms"] = None
    with pytest.raises(ReportError):
        validate_report(timed_without_latency)


# ---------------------------------------------------------------- frame path (--frames)

FRAME_SIZES = [(48, 64), (7, 3)]  # non-square, and smaller than the model's input on both axes


def _frames_backend() -> types.ModuleType:
    """A registry module whose runner has the whole frame path (`run_frames`), made from the reference model."""
    module = types.ModuleType("fake_frames_backend")

    def available(device):
        return True, ""

    def load(package, device, precision):
        cfg = package.config
        model = build_reference_model(cfg, package.tensors)

        @torch.inference_mode()
        def run(batch):
            return model(batch)

        def run_frames(frames):
            logits = run(torch.from_numpy(preprocess_frames(frames, cfg.preprocessing))).numpy()
            results = results_from_logits(cfg.task, logits, [f.shape[:2] for f in frames], cfg.classes)
            return np.stack([r.mask for r in results])

        return Runner(run=run, uses_torch=True, device="cpu", precision=precision, run_frames=run_frames)

    module.available, module.load = available, load
    return module


@pytest.fixture(scope="module")
def frames_report(small_package):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "fake_frames", _frames_backend())
        patch.setitem(BACKEND_MODULES, "fake_frames", "fake_frames")
        return run_bench(fast_options(small_package, backends=["reference", "optimized", "fake_frames"],
                                      frames=FRAME_SIZES, iterations=2))


def test_frame_rows_split_end_to_end_into_pre_infer_post(frames_report):
    validate_report(frames_report)
    json.dumps(frames_report, allow_nan=False)
    assert frames_report["settings"]["frames"] == [list(size) for size in FRAME_SIZES]
    paths = {"reference": "logits", "optimized": "grid", "fake_frames": "frames"}
    cases = [c for c in frames_report["cases"] if c["status"] == "ok"]
    assert {(c["backend"], c["batch"]) for c in cases} == {(b, n) for b in paths for n in (1, 2)}
    for case in cases:
        assert [(e["height"], e["width"]) for e in case["frames"]] == FRAME_SIZES
        for entry in case["frames"]:
            assert entry["status"] == "ok", entry["message"]
            assert entry["frame_path"] == paths[case["backend"]]
            assert entry["end_to_end_ms"]["runs"] >= 2 and entry["infer_ms"]["runs"] >= 2
            assert entry["end_to_end_vs_forward"] > 0
            fused = entry["frame_path"] == "frames"
            assert entry["fused_into_infer"] == (["preprocess", "postprocess"] if fused else [])
            for stage in ("pre_ms", "post_ms"):
                assert (entry[stage] is None) if fused else entry[stage]["runs"] >= 2
            host = "perf_counter_ns"  # a CPU run: every step on the host clock, each named
            assert entry["timers"] == {"end_to_end": host, "pre": None if fused else host, "infer": host,
                                       "post": None if fused else host}
    table = format_frames_table(frames_report).splitlines()
    assert len(table) == 2 + 2 * len(cases) and "pre ms" in table[0] and "infer ms" in table[0]
    assert any("fused" in line and "fake_frames" in line for line in table[2:])
    assert any("48x64" in line and "grid" in line and "host/host/host/host" in line for line in table[2:])
    markdown = format_markdown(frames_report)
    frame_lines = [line for line in markdown.splitlines() if line.startswith("| ") and "x64 |" in line]
    assert len(frame_lines) == len(cases)
    assert format_frames_table({**frames_report, "cases": []}) == ""


def test_schema_checks_the_frame_entries(frames_report):
    entry_path = next(i for i, c in enumerate(frames_report["cases"]) if c["backend"] == "optimized")
    missing_pre = json.loads(json.dumps(frames_report))
    missing_pre["cases"][entry_path]["frames"][0]["pre_ms"] = None  # a host path must time its preprocessing
    with pytest.raises(ReportError, match=f"cases/{entry_path}/frames/0"):
        validate_report(missing_pre)
    no_field = json.loads(json.dumps(frames_report))
    del no_field["cases"][0]["frames"]
    with pytest.raises(ReportError, match="frames"):
        validate_report(no_field)
    bad_timer = json.loads(json.dumps(frames_report))
    bad_timer["cases"][entry_path]["frames"][1]["timers"]["infer"] = "wall"
    with pytest.raises(ReportError, match="timers/infer"):
        validate_report(bad_timer)


# ---------------------------------------------------------------- CLI

def test_cli_bench_writes_a_valid_json_and_prints_the_table(small_package, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", str(small_package), "--backends", "reference,optimized", "--precisions", "fp32,int8",
               "--batch", "1", "--duration", "0", "--warmup", "0", "--iterations", "1", "--no-compile", "--no-anchor",
               "--gemm-size", "64", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    validate_report(report)
    assert {(c["backend"], c["precision"]) for c in report["cases"]} == {
        ("reference", "fp32"), ("reference", "int8"), ("optimized", "fp32"), ("optimized", "int8")}
    for column in ("min ms", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "timer", "max rel err"):
        assert column in printed
    assert "perf_counter_ns" in printed and f"report: {out}" in printed


def test_cli_bench_exports_every_sample(small_package, tmp_path, capsys):
    out, times = tmp_path / "bench.json", tmp_path / "times" / "samples.json"
    rc = main(["bench", str(small_package), "--backends", "reference", "--batch", "1,2", "--duration", "0",
               "--warmup", "0", "--iterations", "4", "--percentiles", "50,99", "--no-compile", "--no-anchor", "--gemm-size", "64",
               "--json", str(out), "--export-times", str(times)])
    assert rc == 0 and f"times: {times}" in capsys.readouterr().out
    report, exported = json.loads(out.read_text()), json.loads(times.read_text())
    validate_report(report)
    assert report["settings"]["percentiles"] == [50.0, 99.0] and report["settings"]["warmup_s"] == 0.0
    assert exported["schema"] == "ht-engine-bench-times" and len(exported["cases"]) == len(report["cases"]) == 2
    for case, samples in zip(report["cases"], exported["cases"]):
        assert samples["timer"] == case["timer"] == "perf_counter_ns"
        assert samples["samples_ms"] == case["samples_ms"] and len(samples["samples_ms"]) == case["latency_ms"]["runs"]
        assert case["latency_ms"]["runs"] >= 4 and case["gpu_split_ms"] is None
        assert samples["split_timer"] is None and samples["split_samples_ms"] is None


def test_cli_bench_refuses_a_bad_export_path_and_bad_percentiles_before_any_work(small_package, tmp_path, capsys):
    assert main(["bench", str(small_package), "--export-times", str(tmp_path)]) == 2
    assert "--export-times" in capsys.readouterr().err
    for bad in ("0", "50,101", "", "p99"):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "--percentiles", bad])
        assert exit_info.value.code == 2 and "argument --percentiles" in capsys.readouterr().err


def test_cli_bench_frames_adds_the_frame_table(small_package, tmp_path, capsys):
    out, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    rc = main(["bench", str(small_package), "--backends", "optimized", "--batch", "1", "--duration", "0",
               "--warmup", "0", "--iterations", "1", "--no-compile", "--no-anchor", "--gemm-size", "64", "--frames", "48x64,7x3",
               "--json", str(out), "--markdown", str(markdown)])
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    validate_report(report)
    assert report["settings"]["frames"] == [[48, 64], [7, 3]]
    assert all(len(case["frames"]) == 2 for case in report["cases"] if case["status"] == "ok")
    assert "e2e ms" in printed and "48x64" in printed and "7x3" in printed
    assert "Frame path" in markdown.read_text()


@pytest.mark.parametrize("bad", ["48by64", "48x", "0x64", "48x64,", "-4x8"])
def test_cli_bench_refuses_a_bad_frame_size(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--frames", bad])
    assert exit_info.value.code == 2 and "argument --frames" in capsys.readouterr().err


def test_cli_plot_without_matplotlib_is_a_clear_error_before_any_work(small_package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = main(["bench", str(small_package), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "--plot needs matplotlib" in err and "ht-engine[bench]" in err
    assert not (tmp_path / "p.png").exists()


def test_cli_refuses_artifact_and_arch_together(small_package, capsys):
    assert main(["bench", str(small_package), "--arch", "biomedclip-vit-b16"]) == 2
    assert "not both" in capsys.readouterr().err


def test_markdown_section_has_a_row_per_case_and_names_the_command(report):
    text = format_markdown({**report, "command": "ht-engine bench x.htpkg --batch 1,2"})
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(report["cases"])
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    assert "`ht-engine bench x.htpkg --batch 1,2`" in text and "unsupported: " in text


def test_stream_benchmark_script_runs_both_policies_at_both_rates(small_package, tmp_path, capsys):
    pytest.importorskip("av", reason="the stream benchmark writes MP4 (pip install -e '.[stream]')")
    from benchmarks import bench_stream

    out = tmp_path / "stream.json"
    rc = bench_stream.main([str(small_package), "--backend", "reference", "--frames", "4", "--height", "40",
                            "--width", "56", "--json", str(out)])
    assert rc == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["policy"], r["input_rate_fps"]) for r in runs] == [
        ("latest", 30.0), ("all", 30.0), ("latest", 60.0), ("all", 60.0)]
    for run in runs:
        assert run["frames_in"] == 4 and run["processed"] + run["dropped"] == 4
        assert run["latency_ms"]["end_to_end"]["count"] == run["processed"]
    assert all(run["processed"] == 4 for run in runs if run["policy"] == "all")
    table = capsys.readouterr().out.split("e2e p50 ms")[1].splitlines()[1:5]
    assert [line.split()[:2] for line in table] == [["latest", "30"], ["all", "30"], ["latest", "60"], ["all", "60"]]


def test_frames_benchmark_script_reports_its_targets(small_package, tmp_path, capsys):
    from benchmarks import bench_frames

    out = tmp_path / "frames.json"
    assert bench_frames.main(["--package", str(small_package), "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and report["machine"]["git"]["sha"] and isinstance(report["cpu_flags"], list)
    assert [(c["precision"], c["height"], c["width"]) for c in report["cases"]] == [
        (p, h, w) for p in ("bf16", "fp32") for h, w in ((480, 640), (1080, 1920))]
    for case in report["cases"]:
        assert case["frame_path"] == "grid" and case["predict_ms"]["runs"] == case["forward_ms"]["runs"] == 2
        assert case["ratio_of_medians"] > 0 and case["median_ratio"] > 0
    assert report["host"]["pre_ms"]["runs"] == report["host"]["post_ms"]["runs"] == 2
    assert [(t["limit"], isinstance(t["met"], bool)) for t in report["targets"]] == [
        (1.10, True), (1.15, True), (3.0, True), (3.0, True)]
    printed = capsys.readouterr().out
    assert "predict ms" in printed and "target host pre at 1080x1920" in printed


def test_bf16_error_sources_rounds_each_group_it_names(tmp_path, capsys):
    from benchmarks import bf16_error_sources as sources

    out = tmp_path / "sources.json"
    assert sources.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and report["frames"] == 2 and set(report["groups"]) == set(sources.GROUPS)
    assert [row["variant"] for row in report["rows"]] == ["every group", "only backbone_gemms", "only attention"]
    for row in report["rows"]:
        assert 0.9 < row["min"] <= row["mean"] <= 1.0 and row["min"] <= row["bench_frame"]
    assert "| every group |" in capsys.readouterr().out
    # Each group's rounding reaches the model (no group is a silent no-op), and none leaks into the model it copies.
    config = small_config("biomedclip-vit-b16", image_size=64)
    model = build_reference_model(config, small_tensors(config, 3))
    images = random_images(2, 64, seed=3)
    with torch.no_grad():
        reference = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
    assert torch.equal(sources.run_model(model, images, set()), reference)
    for group in sources.GROUPS:
        rounded = sources.run_model(model, images, {group})
        assert not torch.equal(rounded, reference), group
        assert (rounded - reference).abs().max() < 0.1 * reference.abs().max(), group
    with torch.no_grad():
        assert torch.equal(torch.cat([model(images[i:i + 1]) for i in range(len(images))]), reference)


def test_plot_is_a_png(report, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install -e '.[bench]')")
    path = tmp_path / "bench.png"
    write_plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.requires_cuda
def test_cuda_cases_use_device_events_and_device_memory(small_package):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible: device-event timing and CUDA memory peaks need one")
    report = run_bench(fast_options(small_package, device="cuda", backends=["reference", "optimized"],
                                    precisions=["fp32", "fp16"], batches=[1, 3]))
    validate_report(report)
    assert report["machine"]["gpu"]["name"] and "fp16" in report["gemm"]
    ok = [c for c in report["cases"] if c["status"] == "ok"]
    assert {(c["backend"], c["precision"]) for c in ok} >= {("reference", "fp32"), ("optimized", "fp32")}
    for case in ok:
        assert case["timer"] == "cuda_events" and case["memory_kind"] == "cuda_max_allocated"
        assert case["peak_memory_bytes"] > 0
    fp32 = [c for c in ok if c["backend"] == "optimized" and c["precision"] == "fp32"]
    assert all(c["max_rel_error"] <= RELATIVE[torch.float32] for c in fp32)


def _gpu_check(*arguments: str) -> subprocess.CompletedProcess:
    """`python benchmarks/gpu_check.py ARGS` as gpu_check.sh runs it: a script, with this tree first on the path."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), *arguments], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_gpu_check_dry_run_imports_every_section_without_a_gpu():
    done = _gpu_check("--dry-run")
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[1].strip() for line in done.stdout.splitlines()] == [
        "section gemm", "section block", "section tune", "section e2e", "section kernel_count", "section kernels",
        "section frames", "section split"]
    assert _gpu_check("--help").returncode == 0
    refused = _gpu_check("--dry-run", "--sections", "gemm,nope")
    assert refused.returncode == 2 and "unknown section(s) nope" in refused.stderr


def test_gpu_check_split_section_runs_the_bench_on_the_artifact_runtimes(tmp_path):
    """`--device cpu --tiny`: the section's code end to end (no split on a CPU, each row says why), and its table
    with a measured split as a GPU run writes it."""
    out = tmp_path / "gpu_check.json"
    done = _gpu_check("--device", "cpu", "--tiny", "--sections", "split", "--out", str(out))
    assert done.returncode == 0, done.stderr
    section = json.loads(out.read_text())["gpu_split"]
    assert section["validated"] is True and section["precision"] == "fp32"
    rows = {(row["backend"], row["batch"]): row for row in section["rows"]}
    assert set(rows) == {(backend, batch) for backend in ("onnx", "tensorrt") for batch in (1, 2)}
    for batch in (1, 2):
        onnx = rows["onnx", batch]
        assert onnx["status"] == "ok" and onnx["call_median_ms"] > 0 and onnx["gpu_split_ms"] is None
        assert "on a GPU only" in onnx["gpu_split_reason"]
        assert rows["tensorrt", batch]["status"] == "unsupported"
    assert "no split: measured for artifact runtimes on a GPU only" in done.stdout
    split = split_summary([(0.05, 1.25, 0.02), (0.07, 1.5, 0.03)], "cuda_events")
    rows["tensorrt", 1].update(status="ok", message="", call_median_ms=1.9, gpu_split_ms=split, gpu_split_reason=None)
    out.write_text(json.dumps({"gpu_split": section}))
    table = _gpu_check("--table", str(out))
    assert table.returncode == 0, table.stderr
    (line,) = [line for line in table.stdout.splitlines() if line.strip().startswith("tensorrt") and "B=1" in line]
    assert line.split()[3:] == ["1.900", "1.460", "0.060", "1.375", "0.025", "cuda_events", "(2", "runs)"]


def test_gpu_check_kernel_count_section_and_its_table(tmp_path):
    """On CPU the section says it needs a GPU; a GPU run's counts print next to the target, errors as errors."""
    out = tmp_path / "gpu_check.json"
    done = _gpu_check("--device", "cpu", "--tiny", "--sections", "kernel_count", "--out", str(out))
    assert done.returncode == 0, done.stderr
    section = json.loads(out.read_text())["kernel_count"]
    assert section == {"batch": 1, "dtype": "bf16", "target": 80, "skipped": "CUDA kernels are counted on a GPU"}
    assert "(target <= 80): skipped (CUDA kernels are counted on a GPU)" in done.stdout
    section.pop("skipped")
    section.update(arch="biomedclip-vit-b16", task="seg",
                   optimized_graph={"kernels": 97, "memcpy": 0, "memset": 2, "top": [["_adapter_in_kernel", 10]]},
                   optimized_call={"kernels": 99, "memcpy": 1, "memset": 2, "top": []},
                   reference_eager={"error": "RuntimeError: out of memory"}, graph_nodes={"kernel": 97, "memset": 2})
    out.write_text(json.dumps({"kernel_count": section}))
    table = _gpu_check("--table", str(out))
    assert table.returncode == 0, table.stderr
    lines = [line.split() for line in table.stdout.splitlines()]
    assert ["optimized_graph", "97", "kernels", "0", "memcpy", "2", "memset"] in lines
    assert ["optimized_call", "99", "kernels", "1", "memcpy", "2", "memset"] in lines
    assert ["reference_eager", "RuntimeError:", "out", "of", "memory"] in lines
    assert ["graph_nodes", "kernel", "97,", "memset", "2"] in lines
    assert "most frequent in the optimized graph: 10x _adapter_in_kernel" in table.stdout
