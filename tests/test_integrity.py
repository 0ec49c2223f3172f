"""Nothing lost, nothing let in: what the hashes cover, what an output path may replace, where artifact files may
live, and what a signal leaves behind. Each test reproduces a defect through the public entry points."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from engine import Predictor
from engine.artifacts import open_artifact
from engine.cli import main
from engine.config import ModelConfig
from engine.errors import OutputError, PackageError
from engine.export.build import build_artifact
from engine.export.manifest import DIGEST_KEY, MANIFEST, BatchRange, manifest_digest
from engine.package import UnverifiedConfigWarning, package_sha256, read_package, tensors_sha256, text_sha256
from tests.artifact_helpers import small_package

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small seg package and its fp32 ONNX artifact, copied fresh by the tests that alter them."""
    root = tmp_path_factory.mktemp("integrity")
    small_package(root / "seg.htpkg", "biomedclip-vit-b16", "seg")
    small_package(root / "cls.htpkg", "biomedclip-vit-b16", "cls")
    build_artifact(root / "seg.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), root / "seg-onnx")
    build_artifact(root / "cls.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), root / "cls-onnx")
    return root


def _copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return dst


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _reseal(directory: Path, edit) -> None:
    """Edit a manifest and recompute its digest, as someone who knows the format could: the checks behind the
    digest must hold on their own."""
    manifest = json.loads((directory / MANIFEST).read_text())
    edit(manifest)
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def _rewrite_package(src: Path, dst: Path, edit_config=None, legacy=False) -> None:
    """Write `src`'s tensors with an edited config and hashes that match it (or in the version-1 layout)."""
    with safe_open(str(src), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    raw = json.loads(metadata["config"])
    if edit_config:
        edit_config(raw)
    if legacy:
        raw["sha256"] = tensors_sha256(tensors)
        save_file(tensors, str(dst), metadata={"format": "htpkg", "version": "1",
                                               "config": json.dumps(raw, sort_keys=True)})
        return
    text = json.dumps(raw, sort_keys=True)
    t_sha, c_sha = tensors_sha256(tensors), text_sha256(text)
    save_file(tensors, str(dst), metadata={"format": "htpkg", "version": "2", "config": text, "tensors_sha256": t_sha,
                                           "config_sha256": c_sha, "sha256": package_sha256(t_sha, c_sha)})


# 1: build --out never deletes what is not an artifact


def test_build_refuses_an_out_directory_holding_user_files(built, tmp_path, capsys):
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("x")
    (out / "sub" / "data.bin").write_bytes(b"\0\1")
    before = _tree(out)
    code = main(["build", str(built / "seg.htpkg"), "--backend", "onnx", "--batch", "1", "--out", str(out)])
    assert code == 2
    assert "not empty and not a built artifact" in capsys.readouterr().err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging debris


def test_build_replaces_an_artifact_or_fills_an_empty_directory(built, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    build_artifact(built / "cls.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), empty)
    assert open_artifact(empty).manifest["model"]["task"] == "cls"
    build_artifact(built / "seg.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), empty)  # an artifact: replaced
    assert open_artifact(empty).manifest["model"]["task"] == "seg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_build_refuses_an_out_that_is_a_file(built, tmp_path):
    out = tmp_path / "file"
    out.write_text("mine")
    with pytest.raises(OutputError, match="not a directory"):
        build_artifact(built / "seg.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), out)
    assert out.read_text() == "mine"


# 2: export-triton model names are plain names; other models are never touched


@pytest.mark.parametrize("name", [".", "..", "a/b", "../escape", ".hidden", ""])
def test_export_triton_refuses_names_that_are_not_plain(built, tmp_path, name, capsys):
    repo = tmp_path / "repo"
    (repo / "other_model" / "1").mkdir(parents=True)
    (repo / "other_model" / "config.pbtxt").write_text("name: 'other_model'")
    before = _tree(tmp_path)
    assert main(["export-triton", str(built / "seg-onnx"), "--out", str(repo), "--name", name]) == 2
    assert "plain name" in capsys.readouterr().err
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in repo.iterdir()) == ["other_model"]


def test_export_triton_replaces_only_its_own_model(built, tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "ht_seg").mkdir(parents=True)
    (repo / "ht_seg" / "weights.bin").write_bytes(b"someone else's")
    assert main(["export-triton", str(built / "seg-onnx"), "--out", str(repo), "--name", "ht_seg"]) == 2
    assert "not empty and not a Triton model written by ht-engine" in capsys.readouterr().err
    assert (repo / "ht_seg" / "weights.bin").read_bytes() == b"someone else's"
    assert main(["export-triton", str(built / "seg-onnx"), "--out", str(repo), "--name", "ht_new"]) == 0
    assert main(["export-triton", str(built / "seg-onnx"), "--out", str(repo), "--name", "ht_new"]) == 0  # ours
    assert sorted(p.name for p in repo.iterdir()) == ["ht_new", "ht_seg"]


# 3: the hashes cover the config and the manifest


def _flip_config_digit(path: Path, field: str) -> None:
    """Change one digit of `field`'s value inside the package header's config text (same length)."""
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    start = data.index(field.encode(), 0, header_end)
    digit = next(i for i in range(start + len(field), header_end) if chr(data[i]).isdigit())
    data[digit] = ord("7") if data[digit] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("field", ["scale", "ln_eps", "extract_layers", "num_classes"])
def test_a_package_whose_config_changed_is_refused(built, tmp_path, field, capsys):
    package = _copy(built / "seg.htpkg", tmp_path / "m.htpkg")
    _flip_config_digit(package, f'\\"{field}\\"')
    with pytest.raises(PackageError, match="its config"):
        read_package(package)
    frame = tmp_path / "f.png"
    from PIL import Image

    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(frame)
    assert main(["predict", str(package), str(frame), "--out", str(tmp_path / "o")]) == 2
    assert "altered or corrupt" in capsys.readouterr().err


def test_swapped_class_names_are_refused(built, tmp_path):
    package = tmp_path / "m.htpkg"
    with safe_open(str(built / "seg.htpkg"), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    raw = json.loads(metadata["config"])
    raw["classes"] = raw["classes"][::-1]
    metadata["config"] = json.dumps(raw, sort_keys=True)  # the recorded hashes are left as they were
    save_file(tensors, str(package), metadata=metadata)
    with pytest.raises(PackageError, match="its config"):
        read_package(package)


def test_a_package_whose_tensors_changed_names_the_tensors(built, tmp_path):
    package = _copy(built / "seg.htpkg", tmp_path / "m.htpkg")
    data = bytearray(package.read_bytes())
    data[-3] ^= 0x10
    package.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="its tensors"):
        read_package(package)


@pytest.mark.parametrize("edit", [
    lambda m: m["preprocessing"].__setitem__("scale", 1.0),
    lambda m: m["model"].__setitem__("classes", m["model"]["classes"][::-1]),
    lambda m: m["model"].__setitem__("task", "cls"),
    lambda m: m.__setitem__("precision", "fp16"),
])
def test_a_manifest_whose_content_changed_is_refused(built, tmp_path, edit):
    artifact = _copy(built / "seg-onnx", tmp_path / "a")
    manifest = json.loads((artifact / MANIFEST).read_text())
    edit(manifest)
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="altered after it was written"):
        Predictor.load(artifact)


def test_version_1_packages_and_manifests_still_load_with_a_warning_and_upgrade(built, tmp_path):
    legacy = tmp_path / "v1.htpkg"
    _rewrite_package(built / "seg.htpkg", legacy, legacy=True)
    with pytest.warns(UnverifiedConfigWarning, match="ht-engine upgrade"):
        config, _, _ = read_package(legacy)
    assert config == read_package(built / "seg.htpkg")[0]
    assert main(["upgrade", str(legacy), "--out", str(tmp_path / "v2.htpkg")]) == 0
    assert main(["upgrade", str(legacy), "--out", str(tmp_path / "v2.htpkg")]) == 2  # never overwrites
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_package(tmp_path / "v2.htpkg")

    artifact = _copy(built / "seg-onnx", tmp_path / "a1")
    manifest = json.loads((artifact / MANIFEST).read_text())
    del manifest[DIGEST_KEY]
    (artifact / MANIFEST).write_text(json.dumps(dict(manifest, format_version=1)))
    with pytest.warns(UnverifiedConfigWarning, match="manifest is not"):
        open_artifact(artifact)
    assert main(["upgrade", str(artifact), "--out", str(tmp_path / "a2")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_artifact(tmp_path / "a2").manifest["format_version"] == 2


# 5: every file an artifact names lies inside it


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x", ".."])
def test_manifest_file_names_cannot_leave_the_artifact(built, tmp_path, name, capsys):
    artifact = _copy(built / "seg-onnx", tmp_path / "a")
    target = Path("/etc/passwd")
    digest = __import__("hashlib").sha256(target.read_bytes()).hexdigest()
    _reseal(artifact, lambda m: (m["files"].__setitem__(name, digest), m.__setitem__("artifact", name)))
    with pytest.raises(PackageError, match="plain names inside the artifact directory"):
        open_artifact(artifact)
    assert main(["export-triton", str(artifact), "--out", str(tmp_path / "repo"), "--name", "m"]) == 2
    assert not (tmp_path / "repo").exists()


def test_a_symlinked_artifact_file_is_refused(built, tmp_path):
    artifact = _copy(built / "seg-onnx", tmp_path / "a")
    outside = _copy(artifact / "model.onnx", tmp_path / "outside.onnx")
    (artifact / "model.onnx").unlink()
    (artifact / "model.onnx").symlink_to(outside)
    with pytest.raises(PackageError, match="symbolic link"):
        open_artifact(artifact)


# 11: configs and manifests are schema-checked


@pytest.mark.parametrize("field,value,message", [
    ("num_classes", True, "num_classes must be an integer"),
    ("patch_size", 0, "patch_size must be >= 1"),
    ("preprocessing", "gray", "preprocessing must be an object"),
    ("ln_eps", "1e-6", "ln_eps must be a finite number"),
    ("adapter_layers", [1, 1], "repeats a layer"),
    ("classes", ["background", 1], "classes must be a list of strings"),
])
def test_ill_typed_config_fields_are_refused_by_name(built, tmp_path, field, value, message):
    package = tmp_path / "m.htpkg"
    _rewrite_package(built / "seg.htpkg", package, edit_config=lambda raw: raw.__setitem__(field, value))
    with pytest.raises(PackageError, match=message):
        read_package(package)


def test_config_from_dict_refuses_what_is_not_an_object():
    with pytest.raises(Exception) as caught:
        ModelConfig.from_dict(["arch"])
    assert type(caught.value).__name__ == "ConfigError"


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.__setitem__("files", list(m["files"])), "files must be an object"),
    (lambda m: m["batch"].__setitem__("max", "8"), "batch.max must be an integer"),
    (lambda m: m.__setitem__("preprocessing", [1]), "preprocessing must be an object"),
    (lambda m: m["model"].__setitem__("classes", list("abcde")), "does not fit a seg model with 5 classes"),
])
def test_ill_typed_manifest_fields_are_refused_by_name(built, tmp_path, edit, message):
    artifact = _copy(built / "seg-onnx", tmp_path / "a")
    _reseal(artifact, edit)
    with pytest.raises(PackageError, match=message):
        open_artifact(artifact)


def test_a_swapped_model_file_is_refused_when_it_runs(built, tmp_path):
    artifact = _copy(built / "seg-onnx", tmp_path / "a")
    shutil.copyfile(built / "cls-onnx" / "model.onnx", artifact / "model.onnx")
    digest = __import__("hashlib").sha256((artifact / "model.onnx").read_bytes()).hexdigest()
    _reseal(artifact, lambda m: m["files"].__setitem__("model.onnx", digest))
    predictor = Predictor.load(artifact)
    with pytest.raises(PackageError, match="the model file does not match it"):
        predictor.predict(np.full((20, 30), 100, np.uint8))


# 10: provenance says what ran


def test_provenance_names_the_artifact_backend(built):
    provenance = Predictor.load(built / "seg-onnx").provenance()
    assert provenance["backend"] == "onnx"
    assert provenance["precision"] == "fp32"
    assert provenance["device"] == "cpu"
    assert provenance["package_sha256"] == read_package(built / "seg.htpkg")[2]
    assert provenance["artifact_manifest_sha256"] == json.loads((built / "seg-onnx" / MANIFEST).read_text())[DIGEST_KEY]
    assert Predictor.load(built / "seg.htpkg").provenance()["backend"] == "reference"


def test_an_artifact_refuses_another_backend_name(built):
    with pytest.raises(PackageError, match="name no backend"):
        Predictor.load(built / "seg-onnx", backend="reference")


# 12: outputs get the umask's permissions


def test_outputs_get_the_permissions_of_the_umask(built, tmp_path):
    previous = os.umask(0o022)
    try:
        small_package(tmp_path / "m.htpkg", "biomedclip-vit-b16", "cls")
        build_artifact(tmp_path / "m.htpkg", "onnx", "fp32", BatchRange(1, 1, 2), tmp_path / "art")
        assert main(["export-triton", str(tmp_path / "art"), "--out", str(tmp_path / "repo"), "--name", "m",
                     "--kind", "cpu"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "m.htpkg").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "art" / MANIFEST).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "repo" / "m").stat().st_mode) == 0o755


# 13: a signal leaves no debris


def test_sigterm_during_build_leaves_nothing_behind(built, tmp_path):
    out = tmp_path / "work" / "art"
    out.parent.mkdir()
    command = [sys.executable, "-m", "engine", "build", str(built / "seg.htpkg"), "--backend", "onnx", "--out",
               str(out)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in process.stderr:
        lines.append(line)
        if "exporting ONNX" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 143, "".join(lines) + rest
    assert "terminated" in rest
    assert list(out.parent.iterdir()) == []


# 9: a batch range beyond what an exported graph can index is refused before any work


@pytest.mark.parametrize("text", ["99999999999999999999", "1,4,8193", "0,1,2", "-4"])
def test_build_batch_ranges_are_bounded(built, tmp_path, text, capsys):
    out = tmp_path / "art"
    assert main(["build", str(built / "seg.htpkg"), "--backend", "onnx", "--batch", text, "--out", str(out)]) == 2
    assert "MIN <= OPT <= MAX <= 8192" in capsys.readouterr().err
    assert not out.exists()
