"""`htkernels._cache.WeightsCache`: tensors derived from weights, kept while the weights are unchanged."""

import gc

import torch

from htkernels._cache import WeightsCache


def doubling():
    calls = []

    def compute(*args):
        *tensors, scale = args
        calls.append(scale)
        return sum(tensors) * scale

    return WeightsCache(compute), calls


def test_an_unchanged_tensor_reuses_its_value():
    cache, calls = doubling()
    weight = torch.randn(4, 3)
    value = cache.get((weight,), 2.0)
    assert cache.get((weight,), 2.0) is value and calls == [2.0]
    assert torch.equal(cache.get((weight,), 3.0), weight * 3.0), "other arguments are another entry"
    assert torch.equal(cache.get((weight.clone(),), 2.0), value) and calls == [2.0, 3.0, 2.0], \
        "an equal but distinct tensor is computed on its own"


def test_any_in_place_change_recomputes():
    cache, calls = doubling()
    weight = torch.randn(5)
    first = cache.get((weight,), 2.0)
    with torch.no_grad():
        weight.copy_(torch.arange(5.0))
    assert torch.equal(cache.get((weight,), 2.0), torch.arange(5.0) * 2.0)
    weight.data = torch.ones(5)  # new storage, no version bump of the old one
    assert torch.equal(cache.get((weight,), 2.0), torch.full((5,), 2.0))
    assert len(calls) == 3 and not torch.equal(first, torch.full((5,), 2.0))


def test_inference_tensors_are_never_kept():
    cache, calls = doubling()
    with torch.inference_mode():
        weight = torch.randn(3)
    assert cache.get((weight,), 2.0) is not cache.get((weight,), 2.0)
    assert len(cache) == 0 and len(calls) == 2


def test_an_entry_goes_with_its_tensor():
    cache, _ = doubling()
    weight, other = torch.randn(3), torch.randn(3)
    cache.get((weight, other), 1.0)
    cache.get((other,), 1.0)
    assert len(cache) == 2
    del weight
    gc.collect()
    assert len(cache) == 1


def test_during_a_graph_capture_kept_values_serve_and_new_ones_are_not_kept(monkeypatch):
    """A capture records kernels without running them: what it computes has no values yet and must not be kept,
    while a value kept before the capture (the runner's warm-up) is read by it."""
    import htkernels._cache as cache_module

    cache, calls = doubling()
    warm, cold = torch.randn(3), torch.randn(3)
    kept = cache.get((warm,), 2.0)
    monkeypatch.setattr(cache_module, "capturing", lambda sources: True)
    assert cache.get((warm,), 2.0) is kept
    assert cache.get((cold,), 2.0) is not cache.get((cold,), 2.0)
    assert len(cache) == 1 and len(calls) == 3
