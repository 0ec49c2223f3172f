"""norm_linear (LayerNorm folded into the following GEMM) against LayerNorm → Linear (→ activation)."""

import pytest
import torch

from htkernels.errors import KernelInputError
from htkernels.norm_linear import FOLDED, fold_norm, norm_linear_ref, norm_linear_triton, tuning_candidates

from ..tolerances import RELATIVE, assert_relative, relative_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FUSED = dict(impl="triton", block_m=32, block_n=64, num_warps=4, num_stages=2)


def dense_args(rows, inner, outputs, seed, outliers=0, offset=0.0):
    """x, γ, β, W, b of a LayerNorm → Linear; `outliers` channels of x 50-100× the others (CLIP's residual stream has
    a few such features), `offset` added to every row's values (rows with a large mean)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, inner, generator=gen) + offset
    if outliers:
        channels = torch.randperm(inner, generator=gen)[:outliers]
        scale = 50.0 + 50.0 * torch.rand(outliers, generator=gen)
        sign = torch.where(torch.rand(outliers, generator=gen) < 0.5, -1.0, 1.0)
        x[:, channels] = x[:, channels] * scale + sign * scale
    return (x, 1.0 + 0.3 * torch.randn(inner, generator=gen), 0.2 * torch.randn(inner, generator=gen),
            torch.randn(outputs, inner, generator=gen) * inner ** -0.5, torch.randn(outputs, generator=gen) * 0.5)


def reference(args, eps, activation):
    return norm_linear_ref(*[t.cpu().double() for t in args], eps, activation)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["none", "gelu", "quick_gelu"])
@pytest.mark.parametrize("rows,inner,outputs", [(1, 48, 80), (37, 80, 136), (70, 200, 40)])
def test_folded_kernel_matches_layernorm_linear(device, poisoned, dtype, activation, rows, inner, outputs):
    args = [t.to(device=device, dtype=dtype) for t in dense_args(rows, inner, outputs, seed=rows + inner)]
    actual = norm_linear_triton(*args, 1e-5, activation, tuning=FUSED)
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), reference(args, 1e-5, activation), RELATIVE[dtype],
                    f"norm_linear {activation} {dtype} {rows}x{inner}x{outputs}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("outliers,offset", [(4, 0.0), (8, 0.0), (4, 30.0), (0, 100.0)])
def test_folded_kernel_on_outlier_channels(device, poisoned, dtype, outliers, offset):
    """A few channels 50-100× the others, rows with a large mean: the folded form subtracts μ·colsum(W') from
    x·W'ᵀ, which must not cancel. Within the bound, and no less accurate than the unfused LayerNorm → Linear."""
    args = [t.to(device=device, dtype=dtype) for t in dense_args(45, 768, 96, seed=outliers, outliers=outliers,
                                                                  offset=offset)]
    expected = reference(args, 1e-6, "gelu")
    fused = norm_linear_triton(*args, 1e-6, "gelu", tuning=FUSED)
    unfused = norm_linear_triton(*args, 1e-6, "gelu", tuning=dict(impl="torch"))
    assert_relative(fused.cpu(), expected, RELATIVE[dtype], f"folded, {outliers} outliers, offset {offset}")
    assert relative_error(fused.cpu(), expected) <= 1.5 * relative_error(unfused.cpu(), expected)


def test_default_is_layernorm_then_linear_act(device, poisoned):
    """Without tuning the launcher runs torch's LayerNorm and `linear_act`'s default (cuBLAS + the activation)."""
    args = [t.to(device) for t in dense_args(21, 48, 40, seed=2)]
    x, gamma, beta, weight, bias = args
    normed = torch.nn.functional.layer_norm(x, (48,), gamma, beta, 1e-5)
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(normed, weight, bias))
    assert torch.equal(norm_linear_triton(*args, 1e-5, "gelu"), expected)
    assert tuning_candidates(197)[0]["impl"] == "torch" and tuning_candidates(50432)[0]["impl"] == "torch"


def test_folded_kernel_strided_input(device, poisoned):
    x, gamma, beta, weight, bias = dense_args(33, 48, 40, seed=3)
    wide = torch.randn(48, 70).to(device)
    wide[:, 5:38] = x.t().to(device)
    view = wide[:, 5:38].t()  # [33, 48] with row stride 1, column stride 70
    params = [t.to(device) for t in (gamma, beta, weight, bias)]
    actual = norm_linear_triton(view, *params, 1e-5, "quick_gelu", tuning=FUSED)
    assert_relative(actual.cpu(), reference([x, gamma, beta, weight, bias], 1e-5, "quick_gelu"),
                    RELATIVE[torch.float32], "norm_linear strided")


CANDIDATES = [c for rows in (197, 50432) for c in tuning_candidates(rows)]


@pytest.mark.parametrize("config", CANDIDATES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_norm_linear_candidate(device, poisoned, config):
    args = [t.to(device) for t in dense_args(45, 80, 136, seed=4)]
    actual = norm_linear_triton(*args, 1e-5, "gelu", tuning=config)
    assert_relative(actual.cpu(), reference(args, 1e-5, "gelu"), RELATIVE[torch.float32], f"norm_linear {config}")


def test_folded_weights_are_computed_once_per_weights(device, poisoned):
    """W', colsum(W') and b' are kept per weight tensors: reused while unchanged, recomputed after an in-place
    update of γ (whose result then follows the new weights)."""
    args = [t.to(device) for t in dense_args(19, 48, 40, seed=5)]
    x, gamma, beta, weight, bias = args
    first = norm_linear_triton(*args, 1e-5, "none", tuning=FUSED)
    kept = FOLDED.get((gamma, beta, weight, bias), x.dtype)
    assert all(torch.equal(a, b) for a, b in zip(kept, fold_norm(gamma, beta, weight, bias, x.dtype)))
    assert torch.equal(norm_linear_triton(*args, 1e-5, "none", tuning=FUSED), first)
    assert FOLDED.get((gamma, beta, weight, bias), x.dtype) is kept
    with torch.no_grad():
        gamma.mul_(-0.5)
    assert FOLDED.get((gamma, beta, weight, bias), x.dtype) is not kept
    after = norm_linear_triton(*args, 1e-5, "none", tuning=FUSED)
    assert_relative(after.cpu(), reference(args, 1e-5, "none"), RELATIVE[torch.float32], "after a γ update")


def test_norm_linear_rejects_bad_input(device):
    x, gamma, beta, weight, bias = (t.to(device) for t in dense_args(5, 16, 8, seed=6))
    with pytest.raises(KernelInputError, match="activation 'relu'"):
        norm_linear_triton(x, gamma, beta, weight, bias, 1e-5, "relu")
    with pytest.raises(KernelInputError, match=r"norm_weight has shape \[15\], expected \[16\]"):
        norm_linear_triton(x, gamma[:15], beta, weight, bias, 1e-5, "gelu")
    with pytest.raises(KernelInputError, match=r"weight has shape \[8, 16\], expected \[8, 17\]"):
        norm_linear_triton(torch.randn(5, 17, device=device), torch.ones(17, device=device),
                           torch.zeros(17, device=device), weight, bias, 1e-5, "gelu")
    with pytest.raises(KernelInputError, match=r"x must be \[M, K\]"):
        norm_linear_triton(x[None], gamma, beta, weight, bias, 1e-5, "gelu")
    with pytest.raises(KernelInputError, match="power-of-two block_m"):
        norm_linear_triton(x, gamma, beta, weight, bias, 1e-5, "gelu", tuning=dict(impl="triton", block_m=24))


def test_the_default_candidate_tunes_linear_act_inside_the_tuner(device, poisoned, monkeypatch):
    """norm_linear's default candidate runs `linear_act`, itself tuned: its choice is made inside norm_linear's timing
    (the tuner's lock is re-entrant, so this does not deadlock), and both choices are remembered."""
    import threading

    import htkernels._tune as tune

    def measure(launch, dev):
        launch()
        return 1.0  # all equal: each op keeps its default

    tuner = tune.LaunchTuner(measure=measure)
    monkeypatch.setattr(tune, "TUNER", tuner)
    monkeypatch.setattr(tune.LaunchTuner, "active", staticmethod(lambda dev: True))
    args = [t.to(device) for t in dense_args(23, 48, 40, seed=9)]
    results = []
    worker = threading.Thread(target=lambda: results.append(norm_linear_triton(*args, 1e-5, "gelu")), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "tuning norm_linear deadlocked on the tuner's lock"
    assert_relative(results[0].cpu(), reference(args, 1e-5, "gelu"), RELATIVE[torch.float32], "norm_linear tuned")
    assert sorted(choice["op"] for choice in tuner.report()) == ["linear_act", "norm_linear"]
    assert all(choice["config"]["impl"] == "torch" for choice in tuner.report())
