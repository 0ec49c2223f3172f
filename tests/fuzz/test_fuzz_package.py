"""Fuzzing of the package, manifest and config loaders: `.htpkg` header and tensor bytes, an artifact's
manifest.json (JSON mutations), and `ModelConfig.from_dict` (dict mutations). Only typed engine errors may come out
(see harness.py)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given

from engine.artifacts import open_artifact
from engine.config import ModelConfig
from engine.export.manifest import BatchRange, make_manifest, write_manifest
from engine.package import read_package, save_package
from tests.helpers import small_config, small_tensors

from .harness import mutated_bytes, mutated_dict, only_typed_errors

CONFIG = small_config("biomedclip-vit-b16", task="seg", num_classes=2, image_size=32, layers=2, extract_layers=[0, 1],
                      adapter_layers=[0, 1])
CONFIG_DICT = json.loads(CONFIG.to_json())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-package")


@pytest.fixture(scope="module")
def package_bytes(scratch):
    path = scratch / "base.htpkg"
    save_package(path, CONFIG, small_tensors(CONFIG, seed=1))
    return path.read_bytes()


@pytest.fixture(scope="module")
def manifest(scratch, package_bytes):
    folder = scratch / "artifact"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07 stand-in model bytes")
    return make_manifest(backend="onnx", precision="fp32", batch=BatchRange(1, 1, 4), config=CONFIG,
                         package_sha256="0" * 64, artifact="model.onnx", directory=folder, tools={"fuzz": "1"})


def test_package_header_and_data(scratch, package_bytes):
    header_end = 8 + struct.unpack("<Q", package_bytes[:8])[0]

    @given(data=mutated_bytes(package_bytes, (0, header_end)) | mutated_bytes(package_bytes))
    def run(data):
        path = scratch / "fuzzed.htpkg"
        path.write_bytes(data)
        only_typed_errors(lambda: read_package(path), data)

    run()


def test_artifact_manifest(scratch, manifest):
    folder = scratch / "artifact"

    @given(document=mutated_dict(manifest))
    def run(document):
        write_manifest(folder, document)
        only_typed_errors(lambda: open_artifact(folder), document)

    run()


@given(data=mutated_dict(CONFIG_DICT))
def test_model_config_from_dict(data):
    only_typed_errors(lambda: ModelConfig.from_dict(data), data)


def test_base_inputs_load(scratch, package_bytes, manifest):
    (scratch / "fuzzed.htpkg").write_bytes(package_bytes)
    assert read_package(scratch / "fuzzed.htpkg")[0] == CONFIG
    write_manifest(scratch / "artifact", manifest)
    open_artifact(scratch / "artifact")
    assert ModelConfig.from_dict(CONFIG_DICT) == CONFIG
