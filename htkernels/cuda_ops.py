"""The CUDA C++ kernels of `csrc/` as torch.library ops: `htkernels::cuda_adapter_spatial`, `htkernels::cuda_preprocess`.

Same contracts as the reference/Triton ops (htkernels/README.md). The compiled extension `htkernels._C` is optional:
the ops are registered (with fake implementations, so tracing works anywhere) whether or not it was built, and a
call on CUDA tensors without it raises a `KernelUnavailableError` that says how to build it. The launchers check
every size again on the C++ side and return a status that `launch` raises; the checks here turn tensor mistakes into
`KernelInputError`s that name the argument.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

from .errors import KernelInputError, KernelUnavailableError
from .pillow import vertical_pass_first

_STATUS_OK, _STATUS_INVALID_ARGUMENT = 0, 1  # htk::StatusCode (csrc/htk.h); 2 is a CUDA failure
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_BUILD_HINT = ("build it with nvcc on PATH: `pip install -e .` or `HTK_CUDA_ARCHS=90 python3 setup.py build_ext "
               "--inplace` (pybind11 must be importable); see docs/cuda.md")


def load_extension():
    """The compiled `htkernels._C`, or a `KernelUnavailableError` saying why it is missing and how to build it."""
    try:
        return importlib.import_module("htkernels._C")
    except ImportError as exc:
        raise KernelUnavailableError(f"the CUDA C++ kernels (htkernels._C) are not built ({exc}); {_BUILD_HINT}") \
            from exc


def extension_status() -> tuple[bool, str]:
    """(True, description) when `htkernels._C` imports, else (False, the reason)."""
    try:
        extension = load_extension()
    except KernelUnavailableError as exc:
        return False, str(exc)
    return True, f"htkernels._C built against CUDA runtime {extension.CUDART_VERSION}"


def launch(launcher, *args, **kwargs) -> None:
    """Call one of `htkernels._C`'s launchers and raise its failure as a typed error.

    The launchers return `(code, message)` rather than throwing (no C++ exception crosses the extension): a bad
    argument is a `KernelInputError` (a ValueError), a CUDA failure (no GPU, a failed launch) a
    `KernelUnavailableError`."""
    code, message = launcher(*args, **kwargs)
    if code == _STATUS_OK:
        return
    if code == _STATUS_INVALID_ARGUMENT:
        raise KernelInputError(message)
    raise KernelUnavailableError(message)


def _require_cuda(name: str, tensor: torch.Tensor, device: Optional[torch.device] = None) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise KernelInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cuda":
        raise KernelInputError(f"{name}: the CUDA kernels need CUDA tensors, got one on {tensor.device}; "
                         "use the reference ops (htkernels::adapter_spatial / preprocess) on CPU")
    if device is not None and tensor.device != device:
        raise KernelInputError(f"{name}: on {tensor.device}, but the op's input is on {device}")


def _require_shape(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise KernelInputError(f"{name}: expected shape {list(shape)}, got {list(tensor.shape)}")


def _parameter(name: str, tensor: torch.Tensor, shape: tuple, device: torch.device) -> torch.Tensor:
    """A parameter as the fp32 contiguous tensor the launcher reads (a no-op for one that already is)."""
    _require_cuda(name, tensor, device)
    _require_shape(name, tensor, shape)
    if not tensor.is_floating_point():
        raise KernelInputError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor.to(torch.float32).contiguous()


def _activation_dtype(name: str, tensor: torch.Tensor) -> int:
    if tensor.dtype not in _DTYPE_CODES:
        raise KernelInputError(f"{name}: dtype {tensor.dtype} is not supported; expected float32, float16 or bfloat16")
    return _DTYPE_CODES[tensor.dtype]


def _spatial_shape(z: torch.Tensor, h: int, w: int) -> tuple[int, int, int]:
    if z.dim() != 3:
        raise KernelInputError(f"z: expected [B, 1 + h*w, r], got shape {list(z.shape)}")
    batch, tokens, channels = z.shape
    if not (1 <= h <= 32 and 1 <= w <= 32):
        raise KernelInputError(f"grid {h}x{w} is out of range: the kernels take h and w in [1, 32]")
    if tokens != 1 + h * w:
        raise KernelInputError(f"z has {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w} (CLS first, then the grid)")
    return batch, tokens, channels


def adapter_spatial_into(out: torch.Tensor, z: torch.Tensor, h: int, w: int, spectral: Optional[torch.Tensor],
                         k3: torch.Tensor, k5: torch.Tensor, k7: torch.Tensor, conv_bias: torch.Tensor,
                         noise_w1: torch.Tensor, noise_b1: torch.Tensor, noise_w2: torch.Tensor,
                         noise_b2: torch.Tensor, proj: torch.Tensor, proj_bias: torch.Tensor) -> torch.Tensor:
    """Run the CUDA `adapter_spatial` into `out` (contiguous, shape and dtype of z) on the current stream."""
    _require_cuda("z", z)
    device = z.device
    batch, _, channels = _spatial_shape(z, h, w)
    dtype_code = _activation_dtype("z", z)
    _require_cuda("out", out, device)
    if out.shape != z.shape or out.dtype != z.dtype or not out.is_contiguous():
        raise KernelInputError(f"out: expected a contiguous {z.dtype} tensor of shape {list(z.shape)}, "
                         f"got {out.dtype} {list(out.shape)} (contiguous={out.is_contiguous()})")
    if noise_w1.dim() != 2:
        raise KernelInputError(f"noise_w1: expected [r/4, r], got shape {list(noise_w1.shape)}")
    hidden = noise_w1.shape[0]
    params = {
        "k3": _parameter("k3", k3, (channels, 3, 3), device),
        "k5": _parameter("k5", k5, (channels, 5, 5), device),
        "k7": _parameter("k7", k7, (channels, 7, 7), device),
        "conv_bias": _parameter("conv_bias", conv_bias, (3, channels), device),
        "noise_w1": _parameter("noise_w1", noise_w1, (hidden, channels), device),
        "noise_b1": _parameter("noise_b1", noise_b1, (hidden,), device),
        "noise_w2": _parameter("noise_w2", noise_w2, (3, hidden), device),
        "noise_b2": _parameter("noise_b2", noise_b2, (3,), device),
        "proj": _parameter("proj", proj, (channels, channels), device),
        "proj_bias": _parameter("proj_bias", proj_bias, (channels,), device),
    }
    if spectral is not None:
        spectral = _parameter("spectral", spectral, (channels, h, w // 2 + 1, 2), device)
    extension = load_extension()
    z = z.contiguous()
    workspace_bytes = extension.adapter_spatial_workspace_bytes(batch, h, w, channels, spectral is not None)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        launch(
            extension.adapter_spatial, z.data_ptr(), out.data_ptr(), dtype_code, batch, h, w, channels, hidden,
            0 if spectral is None else spectral.data_ptr(),
            *(params[name].data_ptr() for name in ("k3", "k5", "k7", "conv_bias", "noise_w1", "noise_b1", "noise_w2",
                                                   "noise_b2", "proj", "proj_bias")),
            workspace.data_ptr(), workspace_bytes, torch.cuda.current_stream(device).cuda_stream)
    return out


@torch.library.custom_op("htkernels::cuda_adapter_spatial", mutates_args=())
def cuda_adapter_spatial(z: torch.Tensor, h: int, w: int, spectral: Optional[torch.Tensor], k3: torch.Tensor,
                         k5: torch.Tensor, k7: torch.Tensor, conv_bias: torch.Tensor, noise_w1: torch.Tensor,
                         noise_b1: torch.Tensor, noise_w2: torch.Tensor, noise_b2: torch.Tensor, proj: torch.Tensor,
                         proj_bias: torch.Tensor) -> torch.Tensor:
    """`g [B, 1+h·w, r]` from `z [B, 1+h·w, r]`: the CUDA C++ twin of `htkernels::adapter_spatial`."""
    out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    return adapter_spatial_into(out, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                                proj, proj_bias)


@cuda_adapter_spatial.register_fake
def _cuda_adapter_spatial_fake(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                               proj_bias):
    _spatial_shape(z, h, w)
    return torch.empty(z.shape, dtype=z.dtype, device=z.device)


def _weights(name: str, weights: torch.Tensor, rows_in: int, device: torch.device) -> torch.Tensor:
    _require_cuda(name, weights, device)
    if weights.dim() != 2 or weights.shape[1] != rows_in or weights.shape[0] < 1:
        raise KernelInputError(f"{name}: expected [out_size, {rows_in}] fixed-point coefficients, got {list(weights.shape)}")
    if weights.is_floating_point() or weights.is_complex() or weights.dtype == torch.bool:
        raise KernelInputError(f"{name}: expected int32 fixed-point coefficients (22 fractional bits, as "
                         f"engine.preprocess.pil_resize_matrix gives them), got {weights.dtype}")
    return weights.to(torch.int32).contiguous()


def _frames_shape(frames: torch.Tensor) -> tuple[int, int, int, int]:
    if frames.dtype != torch.uint8:
        raise KernelInputError(f"frames: expected uint8 pixels, got {frames.dtype}")
    if frames.dim() == 3:
        return (*frames.shape, 1)
    if frames.dim() == 4 and frames.shape[3] == 3:
        return tuple(frames.shape)
    raise KernelInputError(f"frames: expected [B, H, W] (gray) or [B, H, W, 3] (RGB), got shape {list(frames.shape)}")


def preprocess_into(out: torch.Tensor, frames: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """Run the CUDA `preprocess` into `out` (contiguous `[B, 3, S_h, S_w]`, any of the three float dtypes)."""
    _require_cuda("frames", frames)
    device = frames.device
    batch, height, width, frame_channels = _frames_shape(frames)
    rows = _weights("row_weights", row_weights, height, device)
    cols = _weights("col_weights", col_weights, width, device)
    out_h, out_w = rows.shape[0], cols.shape[0]
    _require_cuda("out", out, device)
    dtype_code = _activation_dtype("out", out)
    if tuple(out.shape) != (batch, 3, out_h, out_w) or not out.is_contiguous():
        raise KernelInputError(f"out: expected a contiguous tensor of shape {[batch, 3, out_h, out_w]}, "
                         f"got {list(out.shape)} (contiguous={out.is_contiguous()})")
    if vertical_pass_first(height, width, out_h, out_w):
        # The kernel runs the horizontal pass first; on the transposed frame that is Pillow's vertical-first order.
        transposed = torch.empty((batch, 3, out_w, out_h), dtype=out.dtype, device=device)
        preprocess_into(transposed, frames.transpose(1, 2), cols, rows, scale)
        return out.copy_(transposed.transpose(2, 3))
    extension = load_extension()
    frames = frames.contiguous()
    workspace_bytes = extension.preprocess_workspace_bytes(batch, height, out_h, out_w)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        launch(extension.preprocess, frames.data_ptr(), rows.data_ptr(), cols.data_ptr(), out.data_ptr(), dtype_code,
               float(scale), batch, height, width, frame_channels, out_h, out_w, workspace.data_ptr(),
               workspace_bytes, torch.cuda.current_stream(device).cuda_stream)
    return out


@torch.library.custom_op("htkernels::cuda_preprocess", mutates_args=())
def cuda_preprocess(frames: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, scale: float,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """`images [B, 3, S, S]` from uint8 frames: the CUDA C++ twin of `htkernels::preprocess`."""
    out = torch.empty((frames.shape[0], 3, row_weights.shape[0], col_weights.shape[0]), dtype=out_dtype,
                      device=frames.device)
    return preprocess_into(out, frames, row_weights, col_weights, scale)


@cuda_preprocess.register_fake
def _cuda_preprocess_fake(frames, row_weights, col_weights, scale, out_dtype):
    batch = _frames_shape(frames)[0]
    if out_dtype not in _DTYPE_CODES:
        raise KernelInputError(f"out_dtype {out_dtype} is not supported; expected float32, float16 or bfloat16")
    return torch.empty((batch, 3, row_weights.shape[0], col_weights.shape[0]), dtype=out_dtype, device=frames.device)


def adapter_spatial(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                    proj_bias) -> torch.Tensor:
    """The README call signature of `adapter_spatial`, through `htkernels::cuda_adapter_spatial`."""
    return torch.ops.htkernels.cuda_adapter_spatial(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1,
                                                    noise_w2, noise_b2, proj, proj_bias)


def preprocess(frames, row_weights, col_weights, scale: float, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The README call signature of `preprocess`, through `htkernels::cuda_preprocess`."""
    return torch.ops.htkernels.cuda_preprocess(frames, row_weights, col_weights, float(scale), out_dtype)
