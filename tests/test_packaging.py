"""The package as its users install it: the wheel's metadata (torch only in the [torch] extra, ranges instead of
pins, every extra, the package data), `ht-engine --version`, and the torch-free runtime installed into a fresh
virtual environment with `pip install '.[runtime]'`, running an ONNX artifact through `ht-engine predict`."""

from __future__ import annotations

import email.parser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

import engine
from engine.cli import main

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"torch", "runtime", "gpu", "triton", "tensorrt", "artifacts", "stream", "bench", "dicom", "holoscan", "openvino",
          "serve", "dev"}
BASE_DEPENDENCIES = {"numpy", "pillow", "safetensors", "threadpoolctl", "onnxruntime"}
PACKAGE_DATA = ("engine/py.typed", "htkernels/py.typed", "engine/data/bench_schema.json",
                "engine/data/tensorrt_11.1_onnx_ops.tsv")
# Never build the CUDA extension here (minutes of nvcc), never ask pip about its own version.
BUILD_ENV = {"HTK_SKIP_CUDA_BUILD": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def subprocess_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    return {**env, **BUILD_ENV}


def run(command: list, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env())
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the source tree as git sees it (tracked and new files, nothing ignored), so that building it leaves
    nothing in the working tree."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    copy = tmp_path_factory.mktemp("checkout") / "ht-engine"
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture(scope="module")
def wheel(checkout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", out], cwd=checkout)
    (built,) = out.glob("ht_engine-*.whl")
    return built


def test_wheel_metadata_and_contents(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["Version"] == engine.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    for data in PACKAGE_DATA:
        assert data in names, f"{data} missing from the wheel"
    assert not any(name.startswith("tests/") for name in names)
    if shutil.which(shlex.split(sysconfig.get_config_var("CC") or "cc")[0]):  # built wherever a C compiler is
        assert f"engine/_frame_resize{sysconfig.get_config_var('EXT_SUFFIX')}" in names

    requires = [Requirement(text) for text in metadata.get_all("Requires-Dist")]
    pinned = [str(r) for r in requires if any(spec.operator in ("==", "===") for spec in r.specifier)]
    assert not pinned, f"exact pins belong in constraints.txt, not in the package metadata: {pinned}"
    assert {r.name for r in requires if r.marker is None} == BASE_DEPENDENCIES
    torch_requirements = [r for r in requires if r.name == "torch"]
    assert [str(r.specifier) for r in torch_requirements] == [">=2.6"]
    assert all(r.marker.evaluate({"extra": "torch"}) and not r.marker.evaluate({"extra": ""})
               for r in torch_requirements)
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS
    assert "tensorrt" in {r.name for r in requires if r.marker is not None and r.marker.evaluate({"extra": "tensorrt"})}


def test_build_requirements_are_ranges():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requires = pyproject["build-system"]["requires"]
    assert requires and not [requirement for requirement in requires if "==" in requirement]
    assert pyproject["project"]["dynamic"] == ["version"]


def test_version_output(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(rf"ht-engine {re.escape(engine.__version__)} \(git {sha[:12]}(, modified)?\)", lines[0])
    import torch

    assert f"torch {torch.__version__}" in lines
    assert any(re.fullmatch(r"onnxruntime \d+\.\d+\S*", line) for line in lines)
    assert "tensorrt not installed" in lines or any(line.startswith("tensorrt ") for line in lines)


def test_import_engine_imports_no_torch():
    code = "import sys, engine, engine.cli; engine.cli.build_parser(); assert 'torch' not in sys.modules, 'torch'"
    run([sys.executable, "-c", code], cwd=REPO)


@pytest.mark.slow
def test_runtime_install_runs_an_onnx_artifact_without_torch(checkout, tmp_path):
    from engine.export.build import build_artifact
    from engine.export.manifest import BatchRange
    from engine.runtime import Predictor
    from tests.artifact_helpers import small_package

    small_package(tmp_path / "m.htpkg", "biomedclip-vit-b16", "seg", size=64)
    artifact = build_artifact(tmp_path / "m.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), tmp_path / "m-onnx")
    frame = np.random.default_rng(5).integers(0, 256, (57, 83), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "frame.png")
    expected = Predictor.load(artifact).predict([frame])[0].mask

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    installed = run([python, "-m", "pip", "install", "-c", REPO / "constraints.txt", ".[runtime]"], cwd=checkout,
                    timeout=600)
    assert "torch" not in installed.stdout.lower()
    run([python, "-c", "import importlib.util, sys; import engine; "
                       "assert importlib.util.find_spec('torch') is None and 'torch' not in sys.modules"], cwd=tmp_path)

    version = run([venv / "bin" / "ht-engine", "--version"], cwd=tmp_path).stdout.splitlines()
    assert version[0] == f"ht-engine {engine.__version__}"  # installed, not a checkout: no commit
    assert "torch not installed" in version

    run([venv / "bin" / "ht-engine", "predict", artifact, tmp_path / "frame.png", "--out", tmp_path / "pred"],
        cwd=tmp_path)
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert summary["backend"] == "onnx" and summary["engine_version"] == engine.__version__
    mask = np.asarray(Image.open(tmp_path / "pred" / "frame_mask.png"))
    np.testing.assert_array_equal(mask, expected)
