"""Fuzzing of the checkpoint readers: `torch.save` zips, raw pickles and TorchScript archives, as bytes and with
their data.pkl mutated inside a well-formed zip. Only typed engine errors may come out (see harness.py)."""

from __future__ import annotations

import io
import pickle
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from torch import nn

from engine.weights.importer import load_checkpoint_file

from .harness import mutated_bytes, only_typed_errors

STATE = {"visual.conv1.weight": torch.randn(4, 3, 2, 2), "visual.ln_pre.bias": torch.randn(4).half(),
         "logit_scale": torch.tensor(4.6)}


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_bytes() -> bytes:
    root = _Holder()
    root.add_module("visual", _Holder())
    root.visual.add_module("conv1", _Holder())
    root.visual.conv1.register_buffer("weight", STATE["visual.conv1.weight"])
    root.visual.add_module("ln_pre", _Holder())
    root.visual.ln_pre.register_buffer("bias", STATE["visual.ln_pre.bias"])
    with tempfile.TemporaryDirectory() as folder:
        torch.jit.script(root).save(str(Path(folder) / "m.pt"))
        return (Path(folder) / "m.pt").read_bytes()


def _torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(STATE, buffer)
    return buffer.getvalue()


TORCHSCRIPT = _torchscript_bytes()
TORCH_SAVE = _torch_save_bytes()
PICKLE = pickle.dumps({"reduces": {"0.weight": [1.0, 2.0]}, "blocks": {}}, protocol=2)
with zipfile.ZipFile(io.BytesIO(TORCHSCRIPT)) as _archive:
    DATA_PKL_NAME = next(name for name in _archive.namelist() if name.endswith("/data.pkl"))
    DATA_PKL = _archive.read(DATA_PKL_NAME)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-checkpoints")


def _load(scratch, data: bytes, name: str) -> None:
    path = scratch / name
    path.write_bytes(data)
    only_typed_errors(lambda: load_checkpoint_file(path, "backbone"), data)


@given(data=mutated_bytes(TORCHSCRIPT))
def test_torchscript_archive_bytes(scratch, data):
    _load(scratch, data, "ts.pt")


@given(pickled=mutated_bytes(DATA_PKL))
def test_torchscript_data_pkl(scratch, pickled):
    """A mutated data.pkl in an otherwise valid archive (valid CRCs): the restricted unpickler itself is fuzzed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(TORCHSCRIPT)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, pickled if info.filename == DATA_PKL_NAME else source.read(info))
    _load(scratch, buffer.getvalue(), "ts_pkl.pt")


@given(data=mutated_bytes(TORCH_SAVE))
def test_torch_save_zip(scratch, data):
    _load(scratch, data, "saved.pt")


@given(data=mutated_bytes(PICKLE))
def test_raw_pickle(scratch, data):
    _load(scratch, data, "adapter.pth")


def test_base_checkpoints_load(scratch):
    for name, data in (("ts.pt", TORCHSCRIPT), ("saved.pt", TORCH_SAVE)):
        (scratch / name).write_bytes(data)
        loaded = load_checkpoint_file(scratch / name, "backbone")
        assert all(torch.equal(loaded[key], STATE[key]) for key in loaded)
