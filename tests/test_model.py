"""The reference model against the independent float64 formulation in `tests/oracle.py`."""

import pytest
import torch

from engine.model import build_reference_model
from engine.model.adapter import HTAdapter

from . import oracle
from .helpers import ALL_ARCHS, random_images, small_config, small_tensors
from .tolerances import EXACT_REWRITE, RELATIVE, assert_relative


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
def test_reference_matches_oracle(arch, task, filter_kind):
    cfg = small_config(arch, task, filter_kind)
    tensors = small_tensors(cfg, seed=hash((arch, task, filter_kind)) % 1000)
    model = build_reference_model(cfg, tensors)
    images = random_images(2, cfg.image_size, seed=1)
    with torch.no_grad():
        actual = model(images)
    expected = oracle.forward(cfg, tensors, images)
    assert_relative(actual, expected, RELATIVE[torch.float32], f"{arch} {task} {filter_kind}")


@pytest.mark.parametrize("grid,batch", [(7, 1), (6, 3), (5, 2)])
@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
def test_adapter_matches_oracle(grid, batch, filter_kind):
    torch.manual_seed(grid * 10 + batch)
    cfg = small_config("biomedclip-vit-b16", filter_kind=filter_kind, image_size=16 * grid)
    tensors = small_tensors(cfg, seed=grid)
    adapter = HTAdapter(cfg.width, cfg.bottleneck, filter_kind, grid)
    prefix = "backbone.blocks.0.adapter."
    adapter.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    x = torch.randn(batch, grid * grid + 1, cfg.width)
    with torch.no_grad():
        actual = adapter(x)
    expected = oracle.adapter(x.double(), {k: v.double() for k, v in tensors.items()}, prefix, grid)
    assert_relative(actual - x, expected - x.double(), RELATIVE[torch.float32], "adapter update")


@pytest.mark.parametrize("shape", [(2, 16, 14, 14), (1, 8, 7, 5), (3, 4, 6, 9)])
def test_per_channel_filter_fft_equals_scaling(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    s = torch.randn(shape, generator=generator)
    adapter = HTAdapter(32, shape[1], "channel", shape[2])
    with torch.no_grad():
        adapter.spatial.freq_filter.copy_(torch.rand(shape[1], generator=generator) + 0.5)
        filtered = adapter.spatial.frequency_filter(s)
    expected = s * adapter.spatial.freq_filter.detach().view(1, -1, 1, 1)
    assert_relative(filtered, expected, EXACT_REWRITE, "per-channel FFT filter")


def test_blocks_past_last_extracted_layer_do_not_change_output():
    cfg = small_config("openai-clip-vit-b16", extract_layers=[0, 1, 2])
    tensors = small_tensors(cfg, seed=5)
    images = random_images(1, cfg.image_size, seed=2)
    with torch.no_grad():
        before = build_reference_model(cfg, tensors)(images)
        changed = dict(tensors)
        changed["backbone.blocks.3.mlp.fc1.weight"] = torch.randn_like(changed["backbone.blocks.3.mlp.fc1.weight"])
        after = build_reference_model(cfg, changed)(images)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
