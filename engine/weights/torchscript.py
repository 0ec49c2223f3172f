"""Tensors of a TorchScript archive (OpenAI's released `ViT-B-16.pt`), read without running any of its code.

`torch.jit.load` compiles the archive's `code/` and calls its `__setstate__` methods: a hostile archive runs
what it likes at import (a print, an endless loop, a shell command). Here only `<name>/data.pkl` is read, by an
unpickler that knows a handful of globals: every `__torch__.*` class becomes an inert placeholder that only keeps
the attribute dict pickle hands it, tensors are rebuilt by our own function from the raw bytes of the archive's
`<name>/data/<key>` entries, and anything else is refused before it is called. The tensors are then collected by
their attribute paths (`visual.conv1.weight`, ...), which is the state dict `torch.jit.load(...).state_dict()`
gives for checkpoints whose tensors are all parameters and buffers (CLIP's are).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError

# The storage classes torch writes (`GLOBAL torch FloatStorage`, ...), mapped to the element type of their bytes.
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class ScriptObject:
    """Placeholder of a `__torch__.*` class: records the state pickle builds it with and does nothing else."""

    qualified_name = "__torch__"

    def __setstate__(self, state) -> None:
        self.state = state


class _Storage:
    def __init__(self, data: bytes, dtype: torch.dtype, key: str):
        self.data, self.dtype, self.key = data, dtype, key


def _is_int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2`'s arguments → a tensor, after checking it lies inside its storage."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0 or not _is_int_tuple(size) \
            or not _is_int_tuple(stride) or len(size) != len(stride):
        raise CheckpointError("a tensor record of data.pkl is malformed (expected storage, offset, size, stride)")
    if hooks or metadata:
        raise CheckpointError("a tensor of data.pkl carries backward hooks or metadata, which are refused")
    itemsize = torch.empty((), dtype=storage.dtype).element_size()
    elements = len(storage.data) // itemsize
    reach = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if reach > elements:
        raise CheckpointError(f"a tensor of shape {tuple(size)} reaches element {reach} of storage data/"
                              f"{storage.key}, which holds {elements}")
    flat = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype) if elements else \
        torch.empty(0, dtype=storage.dtype)
    return torch.as_strided(flat, size, stride, offset).clone() if all(size) else \
        torch.empty(size, dtype=storage.dtype)


def _identity(value, *_):
    return value


# TorchScript's list/type helpers only wrap a value that is already built; our versions hand it back unchanged.
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _identity,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch.jit._pickle", name): _identity
       for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, limit: int, where: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.limit, self.where = archive, prefix, limit, where
        self.classes: dict = {}
        self.storages: dict = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise CheckpointError(f"{self.where}: data.pkl refers to {module}.{name}, which is refused (only tensors, "
                              f"TorchScript module attributes and plain containers are read; no code is run)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and type(pid[4]) is int):
            raise CheckpointError(f"{self.where}: data.pkl has a persistent record {str(pid)[:80]}, expected "
                                  f"('storage', <storage type>, key, location, size)")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            entry = f"{self.prefix}data/{key}"
            data = _read_entry(self.archive, entry, self.limit, self.where)
            expected = numel * torch.empty((), dtype=dtype).element_size()
            if len(data) != expected:
                raise CheckpointError(f"{self.where}: {entry} holds {len(data)} bytes, expected {expected} "
                                      f"({numel} elements of {dtype}): truncated or altered archive")
            self.storages[key] = _Storage(data, dtype, key)
        return self.storages[key]


def _read_entry(archive: zipfile.ZipFile, name: str, limit: int, where: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{where}: the archive has no entry {name}") from None
    # torch stores every entry uncompressed, so no entry can be larger than the archive: a bigger claim is a bomb.
    if info.file_size > limit:
        raise CheckpointError(f"{where}: entry {name} claims {info.file_size} bytes, more than the whole archive "
                              f"({limit} bytes)")
    return archive.read(info)


def _collect(obj, prefix: str, out: dict, seen: set, where: str) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        # Only a class with its own `__getstate__`/`__setstate__` pickles anything but its attribute dict, and
        # torch.jit.load would run that `__setstate__`: its meaning is code, so it is refused, not guessed.
        raise CheckpointError(f"{where}: {prefix.rstrip('.') or 'the root module'} ({obj.qualified_name}) has its "
                              f"own __setstate__ (state is a {type(state).__name__}), which is refused: it is code "
                              f"that torch.jit.load would run; expected plain module attributes")
    for name, value in state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{name}.", out, seen, where)


def is_torchscript_archive(path: Path) -> bool:
    """A zip with a `code/` folder (what `torch.jit.save` writes; `torch.save` archives have none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def read_torchscript_state_dict(path) -> dict:
    """`{attribute path: tensor}` of the TorchScript archive at `path`, without running any code from it."""
    path = Path(path)
    where = f"TorchScript archive {path}"
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{where} has {len(pickles)} <name>/data.pkl entries, expected one")
            prefix = pickles[0][: -len("data.pkl")]
            limit = path.stat().st_size
            unpickler = _RestrictedUnpickler(_read_entry(archive, pickles[0], limit, where), archive, prefix, limit,
                                             where)
            root = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile, zlib and pickle raise many types for truncated or garbled archives
        raise CheckpointError(f"{where} cannot be read (truncated or corrupt): {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from exc
    if not isinstance(root, ScriptObject):
        raise CheckpointError(f"{where}: data.pkl holds a {type(root).__name__}, expected a TorchScript module")
    state: dict = {}
    _collect(root, "", state, set(), where)
    return state
