"""Careless and hostile command lines: colliding input names, unwritable outputs, out-of-range numbers, huge images.
Every one ends with exit status 2 and one line that says what was wrong, before any work starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import InputError
from engine.images import read_image
from tests.helpers import tiny_seg_package


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_seg_package(tmp_path_factory.mktemp("pkg") / "small.htpkg")


def one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_predict_inputs_with_one_name_get_distinct_outputs(tmp_path, package):
    rng = np.random.default_rng(0)
    sizes = {"a": (40, 50), "b": (30, 70)}
    for folder, size in sizes.items():
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(tmp_path / folder / "scan.png")
    out = tmp_path / "pred"
    assert main(["predict", str(package), str(tmp_path / "a" / "scan.png"), str(tmp_path / "b" / "scan.png"),
                 "--out", str(out)]) == 0
    results = json.loads((out / "predictions.json").read_text())["results"]
    assert len({entry["mask"] for entry in results}) == len({entry["overlay"] for entry in results}) == 2
    for entry, size in zip(results, sizes.values()):
        assert np.asarray(Image.open(entry["mask"])).shape == size



def test_predict_takes_a_folder_of_images(tmp_path, package):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cine"
    folder.mkdir()
    for index, size in ((10, (40, 50)), (2, (30, 70))):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"frame{index}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    assert main(["predict", str(package), str(folder), "--out", str(out)]) == 0
    results = json.loads((out / "predictions.json").read_text())["results"]
    # Natural order: frame2 before frame10; files that are not images are left out.
    assert [Path(entry["input"]).name for entry in results] == ["frame2.png", "frame10.png"]


def test_predict_folder_without_images_says_so(tmp_path, capsys, package):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(package), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys, "no image files")
    assert "does not exist" not in err


def test_read_image_of_a_folder_is_not_missing(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)

@pytest.mark.parametrize("option", ["--report", "--out", "--jsonl", "--masks"])
def test_stream_unwritable_outputs_fail_before_the_model_loads(tmp_path, capsys, option):
    target = {"--out": "/proc/o.mp4", "--report": "/proc/r.json", "--jsonl": "/proc/f.jsonl",
              "--masks": "/proc/masks"}[option]
    # The artifact does not exist: an error naming the output proves the outputs were checked first.
    code = main(["stream", str(tmp_path / "missing.htpkg"), str(tmp_path / "cine.mp4"), option, target])
    assert code == 2
    one_line_error(capsys, option, target)


@pytest.mark.parametrize("command", [
    ["predict", "ARTIFACT", "IMAGE", "--out", "FILE"],
    ["stream", "ARTIFACT", "IMAGE", "--report", "DIR"],
    ["stream", "ARTIFACT", "IMAGE", "--masks", "FILE"],
    ["stream", "ARTIFACT", "IMAGE", "--jsonl", "FILE/inside.jsonl"],
    ["phantom", "--frames", "2", "--out", "DIR.mp4"],
    ["phantom", "--frames", "2", "--out", "/proc/cine.mp4"],
    ["demo", "--out", "FILE"],
    ["bench", "--json", "DIR"],
    ["init", "--arch", "biomedclip-vit-b16", "--task", "seg", "--out", "DIR"],
    ["import", "--arch", "biomedclip-vit-b16", "--backbone", "FILE", "--adapter", "FILE", "--task", "seg", "--out",
     "/proc/m.htpkg"],
])
def test_every_command_checks_its_outputs_first(tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir.mp4").mkdir()
    names = {"ARTIFACT": str(tmp_path / "missing.htpkg"), "IMAGE": str(tmp_path / "missing.png"),
             "FILE": str(tmp_path / "file"), "DIR": str(tmp_path / "dir"), "DIR.mp4": str(tmp_path / "dir.mp4")}
    argv = [names.get(arg, arg.replace("FILE", str(tmp_path / "file"))) for arg in command]
    assert main(argv) == 2
    option = next(arg for arg in reversed(command) if arg in ("--out", "--report", "--masks", "--jsonl", "--json"))
    one_line_error(capsys, f"{option} {argv[command.index(option) + 1]}", "expected")


@pytest.mark.parametrize("argv,message", [
    (["stream", "m.htpkg", "cine.mp4", "--max-batch", "100000"], "1..1024"),
    (["stream", "m.htpkg", "cine.mp4", "--max-batch", "-4"], "1..1024"),
    (["stream", "m.htpkg", "cine.mp4", "--fps", "nan"], "finite frame rate"),
    (["stream", "m.htpkg", "cine.mp4", "--fps", "-30"], "(0, 1000]"),
    (["stream", "m.htpkg", "cine.mp4", "--budget-ms", "inf"], "finite duration"),
    (["phantom", "--frames", "0", "--out", "c.mp4"], "1..100000"),
    (["phantom", "--width", "100000", "--out", "c.mp4"], "16..4096"),
    (["phantom", "--seed", "-1", "--out", "c.mp4"], "seed"),
    (["demo", "--fps", "0"], "(0, 1000]"),
    (["init", "--arch", "biomedclip-vit-b16", "--task", "seg", "--num-classes", "x", "--out", "m.htpkg"],
     "not an integer"),
    (["import", "--arch", "biomedclip-vit-b16", "--backbone", "b", "--adapter", "a", "--task", "seg",
      "--num-classes", "0", "--out", "m.htpkg"], "1..4096"),
    (["bench", "--batch", "1,100000"], "1..1024"),
    (["bench", "--duration", "-1"], "[0, 86400]"),
    (["bench", "--gemm-size", "1000000"], "1..16384"),
])
def test_numeric_options_are_range_checked_at_parse_time(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err, err


def test_phantom_larger_than_memory_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("engine.commands.options.available_memory", lambda: 2**30)
    assert main(["phantom", "--frames", "100000", "--out", str(tmp_path / "c.mp4")]) == 2
    one_line_error(capsys, "GiB", "--frames 100000")
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.parametrize("side", [40, 100])  # between Pillow's limit and twice it (a warning only), and past it
def test_decompression_bomb_is_an_input_error(tmp_path, capsys, monkeypatch, package, side):
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert main(["predict", str(package), str(path), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(path), "at most 1000 pixels")


def test_unexpected_os_error_is_one_line(tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "m.htpkg"))

    monkeypatch.setattr("engine.package.save_package", disk_full)
    assert main(["init", "--arch", "biomedclip-vit-b16", "--task", "seg", "--out", str(tmp_path / "m.htpkg")]) == 2
    one_line_error(capsys, "No space left on device", "m.htpkg")
