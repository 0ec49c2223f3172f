"""`htkernels::attention`: every back end the launch tuner may choose computes the reference's numbers.

On CPU, SDPA has its own flash kernel and the math path; memory-efficient and cuDNN attention exist on CUDA only,
and there they run in `tests/htkernels` on a GPU through the same parametrization. FlashAttention-3 is not
installable here: a stand-in module with its documented call (`flash_attn_func(q, k, v)` on `[B, N, H, d]`,
returning the output or `(output, lse)`) checks the layout the launcher hands it."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

import htkernels._tune as tune
from htkernels import attention as att
from htkernels.errors import KernelInputError, KernelUnavailableError

from ..tolerances import RELATIVE, assert_relative

# (batch, tokens, heads, head width): ViT-B/16's block at batch 1, odd token counts and a batch > 1.
SHAPES = [(1, 197, 12, 64), (3, 37, 3, 16), (2, 5, 1, 8)]


def packed_qkv(batch, tokens, heads, width, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, tokens, 3 * heads * width, generator=generator) * 2.0).to(dtype)


def independent_attention(qkv, heads):
    """Per head and sample, in fp64 loops: q, k, v are consecutive thirds of the packed last dim, each head-major."""
    batch, tokens, packed = qkv.shape
    width = packed // 3
    d = width // heads
    x = qkv.double()
    out = torch.empty(batch, tokens, width, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            q, k, v = (x[b, :, part * width + h * d: part * width + (h + 1) * d] for part in range(3))
            out[b, :, h * d:(h + 1) * d] = torch.softmax(q @ k.t() / d ** 0.5, dim=-1) @ v
    return out


def cpu_backends():
    """The candidates SDPA can run on CPU tensors (flash and math; SDPA's own choice)."""
    return ["default", "flash", "math"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reference_equals_an_independent_per_head_loop(shape):
    batch, tokens, heads, width = shape
    qkv = packed_qkv(*shape)
    expected = independent_attention(qkv, heads)
    assert_relative(att.attention_ref(qkv.double(), heads), expected, 1e-12, "attention_ref fp64")
    assert att.attention_ref(qkv, heads).dtype == torch.float32


@pytest.mark.parametrize("impl", cpu_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_cpu_backend_equals_the_reference_at_fp32(shape, impl):
    batch, tokens, heads, width = shape
    qkv = packed_qkv(*shape, seed=len(impl))
    actual = att.attention_torch(qkv, heads, tuning={"impl": impl})
    assert actual.shape == (batch, tokens, heads * width) and actual.dtype == torch.float32
    assert_relative(actual, independent_attention(qkv, heads), RELATIVE[torch.float32], f"attention {impl}")


@pytest.mark.parametrize("impl", cpu_backends())
def test_every_cpu_backend_in_bf16_within_the_bf16_bound(impl):
    qkv = packed_qkv(2, 37, 3, 16, torch.bfloat16, seed=3)
    actual = att.attention_torch(qkv, 3, tuning={"impl": impl})
    assert actual.dtype == torch.bfloat16
    assert_relative(actual.float(), independent_attention(qkv, 3), RELATIVE[torch.bfloat16], f"attention {impl} bf16")


def test_strided_qkv_rows_are_read_in_place():
    """qkv as a slice of a wider buffer (row stride > 3·H·d): the views, not a copy, carry the strides."""
    wide = packed_qkv(2, 11, 2, 8)
    qkv = torch.cat([wide, torch.full_like(wide[..., :5], float("nan"))], dim=-1)[..., :wide.shape[-1]]
    assert not qkv.is_contiguous()
    for impl in cpu_backends():
        assert_relative(att.attention_torch(qkv, 2, tuning={"impl": impl}), independent_attention(wide, 2),
                        RELATIVE[torch.float32], f"strided {impl}")


def test_a_backend_that_cannot_run_says_which_and_why():
    if torch.cuda.is_available():
        pytest.skip("on a GPU every SDPA back end exists")
    with pytest.raises(KernelUnavailableError, match="'efficient'.*cpu"):
        att.attention_torch(packed_qkv(1, 9, 2, 8), 2, tuning={"impl": "efficient"})


@pytest.mark.parametrize("qkv,heads,match", [
    (torch.zeros(2, 9, 48), 5, "not 3·heads·d"),
    (torch.zeros(9, 48), 2, r"must be \[B, N, 3·H·d\]"),
    (torch.zeros(2, 9, 48, dtype=torch.float64), 2, "dtype torch.float64"),
    (torch.zeros(2, 48, 9).transpose(1, 2), 2, "contiguous in its last dim"),
], ids=["heads", "rank", "dtype", "last-dim-stride"])
def test_bad_inputs_are_refused(qkv, heads, match):
    with pytest.raises(KernelInputError, match=match):
        att.attention_torch(qkv, heads)


def test_an_unknown_impl_is_refused():
    with pytest.raises(KernelInputError, match="impl='fast'"):
        att.attention_torch(packed_qkv(1, 9, 2, 8), 2, tuning={"impl": "fast"})


def test_candidates_per_dtype():
    names = lambda dtype: [c["impl"] for c in att.tuning_candidates(dtype)]  # noqa: E731
    assert names(torch.float32) == ["default", "efficient", "math"]  # flash and cuDNN take no fp32
    assert names(torch.bfloat16)[0] == "default"
    assert set(names(torch.bfloat16)) >= {"flash", "efficient", "cudnn", "math"}


@pytest.fixture
def fake_fa3(monkeypatch):
    """A `flash_attn_interface` with FA3's documented call: `[B, N, H, d]` q, k, v → `(out [B, N, H, d], lse)`."""
    calls = []

    def flash_attn_func(q, k, v):
        calls.append(tuple(t.shape for t in (q, k, v)))
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)))
        return out.transpose(1, 2).to(q.dtype), torch.zeros(q.shape[0], q.shape[2], q.shape[1])

    module = types.ModuleType(att.FA3_MODULE)
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, att.FA3_MODULE, module)
    att.fa3_function.cache_clear()
    yield calls
    att.fa3_function.cache_clear()


def test_fa3_joins_the_candidates_where_installed_and_gets_its_own_layout(fake_fa3):
    assert "fa3" in [c["impl"] for c in att.tuning_candidates(torch.bfloat16)]
    assert "fa3" not in [c["impl"] for c in att.tuning_candidates(torch.float32)]
    qkv = packed_qkv(2, 37, 3, 16, torch.bfloat16, seed=5)
    actual = att.attention_torch(qkv, 3, tuning={"impl": "fa3"})
    assert fake_fa3 == [((2, 37, 3, 16),) * 3]
    assert actual.shape == (2, 37, 48)
    assert_relative(actual.float(), independent_attention(qkv, 3), RELATIVE[torch.bfloat16], "attention fa3")


def test_fa3_absent_is_a_clear_error():
    att.fa3_function.cache_clear()
    if att.fa3_function() is not None:
        pytest.skip("FlashAttention-3 is installed here")
    with pytest.raises(KernelUnavailableError, match="FlashAttention-3"):
        att.attention_torch(packed_qkv(1, 9, 2, 8, torch.bfloat16), 2, tuning={"impl": "fa3"})


def test_the_tuner_times_every_backend_and_skips_the_ones_that_fail(monkeypatch):
    """With a measure that runs each candidate (as the GPU tuner does) and gives math the best time, the tuner keeps
    math, and the back ends that raise on these inputs are reported with their error, not chosen."""
    def measure(launch, device):
        launch()
        return 1.0 if measure.config == "math" else 5.0

    tuner = tune.LaunchTuner(measure=measure)
    monkeypatch.setattr(tune.LaunchTuner, "active", staticmethod(lambda device: True))
    original = att.sdpa_attention

    def tracking(qkv, heads, backend):
        measure.config = next(name for name, value in att.SDPA_BACKENDS.items() if value == backend)
        return original(qkv, heads, backend)

    monkeypatch.setattr(att, "sdpa_attention", tracking)
    monkeypatch.setattr(tune, "TUNER", tuner)
    qkv = packed_qkv(2, 9, 2, 8, torch.bfloat16)
    out = att.attention_torch(qkv, 2)
    (choice,) = tuner.report()
    assert choice["op"] == "attention" and choice["config"] == {"impl": "math"}
    timed = {entry["config"]["impl"]: entry for entry in choice["measured"]}
    assert set(timed) == {c["impl"] for c in att.tuning_candidates(torch.bfloat16)}
    if not torch.cuda.is_available():  # CPU SDPA has no memory-efficient or cuDNN kernel: reported, not chosen
        assert "error" in timed["efficient"] and "error" in timed["cudnn"]
    assert_relative(out.float(), independent_attention(qkv, 2), RELATIVE[torch.bfloat16], "tuned attention")


def test_fa3_that_refuses_the_inputs_is_a_clear_error(monkeypatch):
    """FA3 takes fp16/bf16 only; asked for it explicitly on inputs it rejects (its own assertion), the launcher says
    which back end could not run what."""
    def flash_attn_func(q, k, v):
        assert q.dtype in (torch.float16, torch.bfloat16), "FA3 needs fp16 or bf16"

    module = types.ModuleType(att.FA3_MODULE)
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, att.FA3_MODULE, module)
    att.fa3_function.cache_clear()
    try:
        with pytest.raises(KernelUnavailableError, match="FlashAttention-3 cannot run torch.float32"):
            att.attention_torch(packed_qkv(1, 9, 2, 8), 2, tuning={"impl": "fa3"})
    finally:
        att.fa3_function.cache_clear()
