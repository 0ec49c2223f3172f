"""The `.htpkg` format: round trip, integrity checks, atomic writes."""

import json
import struct

import pytest
import torch

from engine.config import ModelConfig
from engine.errors import PackageError
from engine.package import read_package, save_package

from .helpers import small_config, small_tensors


@pytest.fixture
def package(tmp_path):
    cfg = small_config("biomedclip-vit-b16", "cls", "spectral")
    tensors = small_tensors(cfg, seed=1)
    path = tmp_path / "m.htpkg"
    sha = save_package(path, cfg, tensors)
    return path, cfg, tensors, sha


def test_round_trip(package):
    path, cfg, tensors, sha = package
    loaded_cfg, loaded, loaded_sha = read_package(path)
    assert loaded_cfg == cfg and loaded_sha == sha
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def _header(path):
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return data, size, json.loads(data[8:8 + size])


def test_altered_tensor_bytes_are_refused(package):
    path, *_ = package
    data, size, _ = _header(path)
    altered = bytearray(data)
    altered[8 + size + 100] ^= 0x01
    path.write_bytes(bytes(altered))
    with pytest.raises(PackageError, match="altered or corrupt"):
        read_package(path)


def test_truncated_package_is_refused(package):
    path, *_ = package
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(PackageError, match="truncated or corrupt"):
        read_package(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(PackageError, match="not an HT package"):
        read_package(tmp_path / "x.safetensors")


def test_tampered_config_is_refused(package):
    path, *_ = package
    data, size, header = _header(path)
    config = json.loads(header["__metadata__"]["config"])
    config["task"] = "detect"
    header["__metadata__"]["config"] = json.dumps(config)
    new_header = json.dumps(header).encode()
    new_header += b" " * ((8 - len(new_header) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data[8 + size:])
    with pytest.raises(PackageError, match="altered or corrupt: its config changed"):
        read_package(path)


def test_missing_package(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        read_package(tmp_path / "nope.htpkg")


def test_failed_write_leaves_nothing(tmp_path):
    cfg = ModelConfig.for_arch("biomedclip-vit-b16", "seg")
    with pytest.raises(Exception):
        save_package(tmp_path / "m.htpkg", cfg, {"a": torch.randn(2), "b": "not a tensor"})
    assert list(tmp_path.iterdir()) == []
