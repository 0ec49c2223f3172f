"""The `ht-engine` command line end to end, as a user runs it (a subprocess, `python -m engine`)."""

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from engine.package import read_package
from engine.synthetic import synthetic_frame


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_init_then_predict(tmp_path):
    package = tmp_path / "m.htpkg"
    init = run_cli("init", "--arch", "metaclip-vit-b16", "--task", "seg", "--seed", "3", "--out", package)
    assert init.returncode == 0, init.stderr
    frame, _ = synthetic_frame(200, 260, seed=4)
    Image.fromarray(frame).save(tmp_path / "frame.png")
    Image.fromarray(np.stack([frame] * 3, -1)).save(tmp_path / "frame_rgb.jpg")
    out = tmp_path / "pred"
    predict = run_cli("predict", package, tmp_path / "frame.png", tmp_path / "frame_rgb.jpg", "--out", out)
    assert predict.returncode == 0, predict.stderr
    summary = json.loads((out / "predictions.json").read_text())
    assert [entry["height"] for entry in summary["results"]] == [200, 200]
    mask = np.asarray(Image.open(out / "frame_mask.png"))
    assert mask.shape == (200, 260) and set(np.unique(mask)) <= {0, 1}


def test_init_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert run_cli("init", "--arch", "openai-clip-vit-b16", "--task", "cls", "--seed", "7", "--out",
                       tmp_path / f"{name}.htpkg").returncode == 0
    first, second = read_package(tmp_path / "a.htpkg"), read_package(tmp_path / "b.htpkg")
    assert first[0] == second[0] and first[2] == second[2]
    assert all(torch.equal(first[1][name], second[1][name]) for name in first[1])


def test_predict_errors_are_reported(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    missing = run_cli("predict", tmp_path / "none.htpkg", tmp_path / "broken.png")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert run_cli("init", "--arch", "biomedclip-vit-b16", "--task", "seg", "--out", tmp_path / "m.htpkg").returncode == 0
    broken = run_cli("predict", tmp_path / "m.htpkg", tmp_path / "broken.png", "--out", tmp_path / "o")
    assert broken.returncode == 2 and "cannot be read" in broken.stderr
    assert not (tmp_path / "o" / "predictions.json").exists()
    bad_arch = run_cli("init", "--arch", "vit-h14", "--task", "seg", "--out", tmp_path / "x.htpkg")
    assert bad_arch.returncode != 0 and "invalid choice" in bad_arch.stderr
