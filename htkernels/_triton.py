"""Optional Triton import shared by the op modules, and the launch checks every launcher makes.

Triton is an optional dependency (extra `triton`): without it the references and the `torch.library`
registrations still import, and a launch says what to install instead of failing at import time.
"""

from __future__ import annotations

import torch

from . import envs
from .errors import KernelInputError, KernelUnavailableError

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only runtime does not need Triton
    triton = None
    tl = None
try:  # grid dependency control (programmatic dependent launch) came with Triton 3.4; older ones run without PDL
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None


def _missing_triton(fn):
    def launch(*args, **kwargs):
        raise KernelUnavailableError(f"{fn.__name__} needs Triton: pip install -c constraints.txt '.[triton]'")

    return launch


def jit(fn):
    """`triton.jit` when Triton is installed; otherwise a stub that raises a `KernelUnavailableError` when launched."""
    return triton.jit(fn) if triton is not None else _missing_triton(fn)


# HTK_PDL, which `programmatic_launch(enabled)` overrides for the launches made inside it.
_PDL = envs.Switch(envs.HTK_PDL)


def programmatic_launch(enabled: bool):
    """Context manager: launch the Triton kernels inside it with (True) or without (False) programmatic dependent
    launch, whatever `HTK_PDL` says; a CUDA graph captured inside keeps the choice in every replay."""
    return _PDL.forced(enabled)


def pdl_options(device: torch.device) -> dict:
    """The launch keywords of a kernel on `device`: `PDL` (its constexpr) and, where programmatic dependent launch
    is on (`HTK_PDL` or `programmatic_launch`), the kernels compiled (not interpreted) for an NVIDIA GPU of Hopper
    or newer (not ROCm) by a Triton that has grid dependency control (3.4+), Triton's `launch_pdl`. Otherwise
    `{"PDL": False}`: the kernel is the same as without PDL."""
    wanted = _PDL.get()
    if not wanted or gdc_wait is None or interpreting() or device.type != "cuda" or torch.version.hip is not None:
        return {"PDL": False}
    if torch.cuda.get_device_capability(device) < (9, 0):
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}


def interpreting() -> bool:
    """True under `TRITON_INTERPRET=1`, where kernels run on CPU tensors (CI without a GPU)."""
    return envs.TRITON_INTERPRET.get()


def check_launch(op: str, tensors: dict, float_dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> None:
    """Every tensor on one CUDA device (or any device when interpreting), floating inputs of a supported dtype."""
    if triton is None:
        raise KernelUnavailableError(f"htkernels::{op} on CUDA needs Triton: "
                                     "pip install -c constraints.txt '.[triton]'")
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) > 1:
        raise KernelInputError(f"htkernels::{op}: all tensors must be on one device, "
                               f"got {sorted(map(str, devices))}")
    device = next(iter(devices))
    if device.type != "cuda" and not interpreting():
        raise KernelInputError(f"htkernels::{op}: the Triton kernel runs on CUDA tensors, got {device}; "
                         f"call htkernels.{op}.{op}_ref on CPU or set TRITON_INTERPRET=1 to interpret")
    for name, tensor in tensors.items():
        if tensor is not None and tensor.is_floating_point() and tensor.dtype not in float_dtypes:
            raise KernelInputError(f"htkernels::{op}: {name} has dtype {tensor.dtype}; "
                                   f"expected one of {float_dtypes}")


def check_shape(op: str, name: str, tensor: torch.Tensor, expected: tuple) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise KernelInputError(f"htkernels::{op}: {name} has shape {list(tensor.shape)}, expected {list(expected)}")


def pow2_at_least(n: int, floor: int = 16) -> int:
    """Block size covering `n`, at least 16 because `tl.dot` needs every dimension ≥ 16."""
    return max(floor, 1 << max(0, (int(n) - 1).bit_length()))


def check_rank(op: str, name: str, tensor: torch.Tensor, layout: str) -> None:
    """`layout` like "[M, D]": the number of dimensions it names is the rank expected."""
    if tensor.dim() != layout.count(",") + 1:
        raise KernelInputError(f"htkernels::{op}: {name} must be {layout}, got shape {list(tensor.shape)}")


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@jit
def dot_low(a, b, INTERPRET_BF16: tl.constexpr):
    """`tl.dot` of two fp16/bf16 tiles with fp32 accumulation.

    With INTERPRET_BF16 the operands (already in their storage dtype) are widened to fp32 first: the same
    products and sums as the tensor-core dot, used under the interpreter, whose bf16 `tl.dot` is wrong.
    """
    if INTERPRET_BF16:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        product = tl.dot(a, b)
    return product


@jit
def wait_for_producer(PDL: tl.constexpr):
    """With PDL (programmatic dependent launch, sm_90+), the first thing a kernel does: let the next kernel in the
    stream be scheduled now (`griddepcontrol.launch_dependents`, taking effect once every program of this grid has
    issued it), then wait until the previous kernel has finished and its writes are visible
    (`griddepcontrol.wait`), before reading anything. Only launch latency overlaps, never data: every kernel waits
    for its predecessor, so it also sees the writes of all earlier ones. Without PDL, nothing."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """`(rows, cols)` of this program's output tile on a 1-D grid of `⌈M/BLOCK_M⌉·⌈N/BLOCK_N⌉` programs, walked in
    groups of GROUP_M tile rows so that programs running together share their operand tiles in L2."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    tile_m = first_m + (pid % per_group) % group_rows
    tile_n = (pid % per_group) // group_rows
    return tile_m * BLOCK_M + tl.arange(0, BLOCK_M), tile_n * BLOCK_N + tl.arange(0, BLOCK_N)


@jit
def matmul_tile(a_ptr, b_ptr, rows, cols, M, N, K, stride_am, stride_ak, stride_bn, stride_bk,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE_FP32: tl.constexpr,
                INTERPRET_BF16: tl.constexpr):
    """fp32 `a[rows] @ b[cols]ᵀ` for `a [M,K]`, `b [N,K]` (any strides): exact fp32 products for fp32 data
    (`ieee`), tensor cores in the storage dtype for fp16/bf16; masked at every edge."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    row_mask = rows < M
    col_mask = cols < N
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if IEEE_FP32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += dot_low(a, b.to(a.dtype), INTERPRET_BF16)
    return acc


@jit
def split_k_tile(a_ptr, b_ptr, ws_ptr, count_ptr, rows, cols, M, N, K, stride_am, stride_ak, stride_bn, stride_bk,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """`(last, acc)`: `matmul_tile` of `a [M,K] @ b [N,K]ᵀ` split along K over the SPLIT_K programs
    `program_id(1)` = 0..SPLIT_K-1 of output tile `program_id(0)`, each owning ⌈K/SPLIT_K⌉ rounded up to BLOCK_K.

    Each stores its fp32 part into the workspace `ws [SPLIT_K, M, N]`, waits on a barrier of its threads, then
    counts itself in on the tile's counter (acquire-release, GPU scope; see htkernels/_arrival.py). The last to
    arrive (`last`) puts the counter back to 0 and sums the SPLIT_K parts, read past its L1 (`.cg`), always in the
    order 0..SPLIT_K-1, so the result does not depend on which program came last; `acc` is 0 for the others."""
    split = tl.program_id(1)
    chunk = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    start = split * chunk
    part = matmul_tile(a_ptr + start * stride_ak, b_ptr + start * stride_bk, rows, cols, M, N,
                       tl.minimum(chunk, K - start), stride_am, stride_ak, stride_bn, stride_bk, BLOCK_M, BLOCK_N,
                       BLOCK_K, IEEE_FP32, INTERPRET_BF16)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offsets = rows[:, None] * N + cols[None, :]
    tl.store(ws_ptr + split * M * N + offsets, part, mask=mask)
    tl.debug_barrier()
    counter = count_ptr + tl.program_id(0)
    last = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if last:
        tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
        for index in tl.static_range(SPLIT_K):
            acc += tl.load(ws_ptr + index * M * N + offsets, mask=mask, other=0.0, cache_modifier=".cg")
    return last, acc


@jit
def gelu_erf(x):
    """GELU with the exact erf, on fp32."""
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@jit
def round_bf16(x, INTERPRET_BF16: tl.constexpr):
    """fp32 `x` rounded to the nearest bf16 value (ties to even) when INTERPRET_BF16, else `x` unchanged.

    The interpreter converts fp32 to bf16 by truncation; the GPU rounds to nearest. Rounding first makes the
    interpreter's conversion exact, so CI checks the numbers the GPU produces.
    """
    if INTERPRET_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        rounded = bits.to(tl.float32, bitcast=True)
    else:
        rounded = x
    return rounded


def interpret_bf16(dtype: torch.dtype) -> bool:
    """The interpreter workarounds of `dot_low` and `round_bf16` apply: interpreting, and bf16 data."""
    return interpreting() and dtype == torch.bfloat16


def launch_config(op: str, defaults: dict, tuning) -> dict:
    """The launch configuration: `defaults` with the keys of `tuning` (a sweep's override) replaced."""
    tuning = tuning or {}
    unknown = sorted(set(tuning) - set(defaults))
    if unknown:
        raise KernelInputError(f"htkernels::{op}: unknown tuning keys {unknown}; "
                               f"this launcher takes {sorted(defaults)}")
    return defaults | tuning
