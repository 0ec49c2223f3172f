"""`attention`: a ViT block's multi-head self-attention on the packed output of its qkv GEMM, run by the
attention back end the launch tuner measured fastest for the shape (see htkernels/README.md).

`F.scaled_dot_product_attention` picks its back end by rules, not by measurement: for ViT-B/16's 197 tokens and
64-wide heads, flash, memory-efficient and cuDNN attention are all eligible in fp16/bf16 and which one is fastest
depends on the card and the batch size. The candidates here:

- `default`: SDPA's own choice (what runs without tuning, and the only fp32 candidate that always runs);
- `flash`, `efficient`, `cudnn`, `math`: SDPA restricted to that back end (`torch.nn.attention.sdpa_kernel`); one
  that cannot run the inputs (flash and cuDNN take no fp32) raises, and the tuner reports and skips it;
- `fa3`: FlashAttention-3's `flash_attn_interface.flash_attn_func`, only where that package is installed (Hopper
  builds); it reads q, k and v in the qkv GEMM's own `[B, N, H, d]` layout, without the transposes SDPA needs.

Every candidate returns `[B, N, H·d]`, the layout the attention projection reads.
"""

from __future__ import annotations

import functools
import importlib
import math
import threading
from typing import Optional

import torch
import torch.nn.functional as F

from ._registry import register_op
from ._triton import check_rank, launch_config
from ._tune import tuned_config
from .errors import KernelInputError, KernelUnavailableError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The SDPA-backed candidates and the `torch.nn.attention.SDPBackend` member each is restricted to (None: SDPA's choice).
SDPA_BACKENDS = {"default": None, "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
FA3_MODULE = "flash_attn_interface"
_SDPA_FLAGS = threading.Lock()


def attention_ref(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """`softmax(q·kᵀ/√d)·v` per head in fp32 (fp64 for fp64 qkv), returned `[B, N, H·d]` in the dtype of qkv;
    qkv `[B, N, 3·H·d]` holds q, k and v side by side, each `[H, d]` head-major (nn.MultiheadAttention's packing)."""
    batch, tokens, packed = qkv.shape
    width = packed // 3
    compute = torch.promote_types(qkv.dtype, torch.float32)
    q, k, v = qkv.to(compute).reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(width // heads), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(batch, tokens, width).to(qkv.dtype)


@functools.lru_cache(maxsize=None)
def fa3_function():
    """FlashAttention-3's `flash_attn_func`, or None where `flash_attn_interface` is not installed."""
    try:
        return importlib.import_module(FA3_MODULE).flash_attn_func
    except ImportError:
        return None


def tuning_candidates(dtype: torch.dtype) -> list:
    """The configurations the tuner times; the first (SDPA's own choice) is the default. fp32 inputs get the SDPA
    candidates that take fp32; FA3 joins for fp16/bf16 where it is installed."""
    names = ["default", "efficient", "math"] if dtype == torch.float32 else list(SDPA_BACKENDS)
    if dtype != torch.float32 and fa3_function() is not None:
        names.append("fa3")
    return [dict(impl=name) for name in names]


def sdpa_attention(qkv: torch.Tensor, heads: int, backend: Optional[str] = None) -> torch.Tensor:
    """SDPA on head-major views of the packed qkv, then the heads side by side `[B, N, H·d]`; `backend` an
    `SDPBackend` member name to restrict SDPA to (None: its own choice). The torch provider's `attention` and the
    SDPA candidates here."""
    batch, tokens, packed = qkv.shape
    width = packed // 3
    # Indexed, not unpacked: unpacking is an unbind, which exports as a Split that OpenVINO runs slower.
    heads_first = qkv.reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k, v = heads_first[0], heads_first[1], heads_first[2]
    if backend is None:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # sdpa_kernel switches torch's process-wide back-end flags: one restricted call at a time, so a call in
        # another thread cannot find its back end switched off (the default, unrestricted, takes no lock).
        with _SDPA_FLAGS, sdpa_kernel([getattr(SDPBackend, backend)]):
            out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, tokens, width)


def _fa3(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    function = fa3_function()
    if function is None:
        raise KernelUnavailableError(f"htkernels::attention: impl='fa3' needs FlashAttention-3 ({FA3_MODULE})")
    batch, tokens, packed = qkv.shape
    width = packed // 3
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).unbind(2)
    out = function(q, k, v)
    out = out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
    return out.reshape(batch, tokens, width)


def attention_torch(qkv: torch.Tensor, heads: int, tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher: checks, then the tuner's choice among `tuning_candidates` on a GPU (SDPA's own choice elsewhere);
    `tuning` (`{"impl": name}`) runs one candidate instead. Any device: the candidates are torch's own ops (and
    FA3's), so the CPU runs every SDPA back end it has."""
    op = "attention"
    check_rank(op, "qkv", qkv, "[B, N, 3·H·d]")
    if qkv.dtype not in FLOAT_DTYPES:
        raise KernelInputError(f"htkernels::{op}: qkv has dtype {qkv.dtype}; expected one of {FLOAT_DTYPES}")
    batch, tokens, packed = qkv.shape
    if heads < 1 or packed % (3 * heads):
        raise KernelInputError(f"htkernels::{op}: qkv's last dim {packed} is not 3·heads·d for heads={heads}")
    if qkv.stride(-1) != 1:
        raise KernelInputError(f"htkernels::{op}: qkv must be contiguous in its last dim, got strides "
                               f"{list(qkv.stride())}")
    candidates = tuning_candidates(qkv.dtype)
    if tuning is not None and tuning.get("impl") not in SDPA_BACKENDS and tuning.get("impl") != "fa3":
        raise KernelInputError(f"htkernels::{op}: tuning impl={tuning.get('impl')!r}; expected one of "
                               f"{sorted([*SDPA_BACKENDS, 'fa3'])}")

    def launch(config):
        try:
            if config["impl"] == "fa3":
                return _fa3(qkv, heads)
            return sdpa_attention(qkv, heads, SDPA_BACKENDS[config["impl"]])
        except (RuntimeError, AssertionError, ValueError) as exc:
            if tuning is None or isinstance(exc, KernelUnavailableError):
                raise  # a candidate the tuner times: reported and skipped there
            what = "FlashAttention-3" if config["impl"] == "fa3" else f"SDPA back end {config['impl']!r}"
            raise KernelUnavailableError(f"htkernels::{op}: {what} cannot run {qkv.dtype} [{batch}, {tokens}, "
                                         f"{packed}] on {qkv.device}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    if tuning is not None:
        return launch(launch_config(op, dict(impl="default"), tuning))
    return launch(tuned_config(op, (batch, tokens, packed, heads, qkv.dtype), candidates, launch, qkv.device, None))


def _attention_fake(qkv, heads):
    return qkv.new_empty((qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3))


@register_op("attention", cuda=attention_torch, fake=_attention_fake)
def attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """The public op: the reference on CPU, on CUDA the tuned choice of attention back end."""
    return attention_ref(qkv, heads)
