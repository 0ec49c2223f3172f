"""The kernels of csrc/ built for a CPU emulation of CUDA (cuda_emulation.h) and called through ctypes, so their
own source is tested against the references on machines without a GPU. Needs g++ (C++20) and the CUDA headers."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[2] / "csrc"
_LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;]*>)?)\s*<<<([^;]*?)>>>\s*\(")
_DYNAMIC_SHARED = "extern __shared__ float shared[];"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def cuda_include_dir() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").is_file():
            return Path(home) / "include"
    return None


def unavailable_reason() -> str:
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if cuda_include_dir() is None:
        return "the CUDA headers are not installed (set CUDA_HOME)"
    return ""


def translate(source: str) -> str:
    """CUDA source → C++ for the emulation: launches become emu::launch calls, dynamic shared memory a buffer."""
    source = source.replace(_DYNAMIC_SHARED, "float* shared = emu::dynamic_shared;")
    return '#include "cuda_emulation.h"\n' + _LAUNCH.sub(r"emu::launch(\1, \2)(", source)


def build(out_dir: Path) -> ctypes.CDLL:
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for cuda_source in sorted(CSRC.glob("*.cu")):
        target = out_dir / (cuda_source.stem + ".cpp")
        target.write_text(translate(cuda_source.read_text()))
        sources.append(str(target))
    library = out_dir / "libhtk_emulated.so"
    command = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-w", f"-I{HERE}", f"-I{CSRC}",
               f"-I{cuda_include_dir()}", *sources, str(HERE / "emulated_api.cpp"), "-o", str(library), "-lpthread"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the emulated kernels failed:\n{result.stderr[-4000:]}")
    return _bind(ctypes.CDLL(str(library)))


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, i64, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    library.emu_adapter_spatial.argtypes = [pointer, pointer, ctypes.c_int, i64, i64, i64, i64, i64, *[pointer] * 11,
                                            pointer, size, ctypes.c_char_p, size]
    library.emu_adapter_spatial.restype = ctypes.c_int
    library.emu_adapter_spatial_workspace_bytes.argtypes = [i64, i64, i64, i64, ctypes.c_int]
    library.emu_adapter_spatial_workspace_bytes.restype = size
    library.emu_preprocess.argtypes = [pointer, pointer, pointer, pointer, ctypes.c_int, ctypes.c_double, i64, i64,
                                       i64, i64, i64, i64, pointer, size, ctypes.c_char_p, size]
    library.emu_preprocess.restype = ctypes.c_int
    library.emu_preprocess_workspace_bytes.argtypes = [i64, i64, i64, i64]
    library.emu_preprocess_workspace_bytes.restype = size
    return library


def _check(code: int, message: ctypes.Array) -> None:
    if code != 0:
        raise ValueError(message.value.decode())


def adapter_spatial(library, z, h, w, spectral, params: dict, names) -> torch.Tensor:
    """g from the emulated launcher: CPU tensors, NaN-poisoned output and workspace."""
    batch, _, channels = z.shape
    out = torch.full_like(z, float("nan"))
    workspace_bytes = library.emu_adapter_spatial_workspace_bytes(batch, h, w, channels, spectral is not None)
    workspace = torch.full((workspace_bytes // 4 + 1,), float("nan"))
    message = ctypes.create_string_buffer(512)
    code = library.emu_adapter_spatial(
        z.data_ptr(), out.data_ptr(), DTYPE_CODES[z.dtype], batch, h, w, channels, params["noise_w1"].shape[0],
        None if spectral is None else spectral.data_ptr(), *(params[name].data_ptr() for name in names),
        workspace.data_ptr(), workspace_bytes, message, len(message))
    _check(code, message)
    return out


def preprocess(library, frames, row_weights, col_weights, scale, out_dtype) -> torch.Tensor:
    batch, height, width = frames.shape[:3]
    channels = frames.shape[3] if frames.dim() == 4 else 1
    out_h, out_w = row_weights.shape[0], col_weights.shape[0]
    out = torch.full((batch, 3, out_h, out_w), float("nan"), dtype=out_dtype)
    workspace_bytes = library.emu_preprocess_workspace_bytes(batch, height, out_h, out_w)
    workspace = torch.full((workspace_bytes,), 0xAB, dtype=torch.uint8)
    message = ctypes.create_string_buffer(512)
    code = library.emu_preprocess(frames.data_ptr(), row_weights.data_ptr(), col_weights.data_ptr(), out.data_ptr(),
                                  DTYPE_CODES[out_dtype], scale, batch, height, width, channels, out_h, out_w,
                                  workspace.data_ptr(), workspace_bytes, message, len(message))
    _check(code, message)
    return out
