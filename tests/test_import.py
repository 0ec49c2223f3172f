"""Import of the authors' checkpoint layouts: bit-exact round trips and every kind of bad checkpoint."""

import os
import pickle
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import nn

from engine.cli import main
from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.package import read_package, save_package
from engine.weights import import_checkpoints, random_package_tensors
from engine.weights.torchscript import read_torchscript_state_dict

from .authors_format import authors_files
from .helpers import ALL_ARCHS, small_config, small_tensors

SMALL_DIMS = dict(width=48, layers=4, heads=4, bottleneck=16, head_dim=24, image_size=112, extract_layers=[1, 2, 3])


def write_authors(tmp_path: Path, cfg, tensors, **kwargs):
    backbone, adapter = authors_files(cfg, tensors, **kwargs)
    backbone_path, adapter_path = tmp_path / "backbone.pt", tmp_path / "best_model.pth"
    torch.save(backbone, backbone_path)
    torch.save(adapter, adapter_path)
    return backbone_path, adapter_path


def small_import(arch, backbone_path, adapter_path, task="seg", **kwargs):
    return import_checkpoints(arch, backbone_path, adapter_path, task, dims=SMALL_DIMS, **kwargs)


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_round_trip_is_bit_exact(tmp_path, arch, task):
    cfg = small_config(arch, task)
    tensors = small_tensors(cfg, seed=11)
    backbone_path, adapter_path = write_authors(tmp_path, cfg, tensors)
    imported_cfg, imported = small_import(arch, backbone_path, adapter_path, task)
    assert imported_cfg.num_classes == cfg.num_classes
    assert imported_cfg.adapter_layers == cfg.adapter_layers
    save_package(tmp_path / "m.htpkg", imported_cfg, imported)
    _, loaded, _ = read_package(tmp_path / "m.htpkg")
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("arch,task", [("biomedclip-vit-b16", "seg"), ("openai-clip-vit-b16", "cls")])
def test_full_size_import_through_cli(tmp_path, arch, task):
    cfg = ModelConfig.for_arch(arch, task, 3)
    tensors = random_package_tensors(cfg, seed=2, calibrate=False)
    backbone_path, adapter_path = write_authors(tmp_path, cfg, tensors)
    out = tmp_path / "model.htpkg"
    code = main(["import", "--arch", arch, "--backbone", str(backbone_path), "--adapter", str(adapter_path),
                 "--task", task, "--out", str(out)])
    assert code == 0
    loaded_cfg, loaded, _ = read_package(out)
    assert loaded_cfg.num_classes == 3 and loaded_cfg.arch == arch
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


def test_fp16_checkpoint_is_widened_exactly(tmp_path):
    cfg = small_config("openai-clip-vit-b16")
    tensors = {k: v.half().float() for k, v in small_tensors(cfg, seed=3).items()}
    backbone, adapter = authors_files(cfg, tensors)
    torch.save({k: v.half() for k, v in backbone.items()}, tmp_path / "b.pt")
    torch.save(adapter, tmp_path / "a.pth")
    _, imported = small_import("openai-clip-vit-b16", tmp_path / "b.pt", tmp_path / "a.pth")
    assert all(torch.equal(imported[k], tensors[k]) for k in tensors)


def test_wrapped_state_dict_with_module_prefix(tmp_path):
    cfg = small_config("unimedclip-vit-b16")
    tensors = small_tensors(cfg, seed=4)
    backbone, adapter = authors_files(cfg, tensors)
    torch.save({"state_dict": {"module." + k: v for k, v in backbone.items()}}, tmp_path / "b.pt")
    torch.save(adapter, tmp_path / "a.pth")
    _, imported = small_import("unimedclip-vit-b16", tmp_path / "b.pt", tmp_path / "a.pth")
    assert torch.equal(imported["backbone.pos_embed"], tensors["backbone.pos_embed"])


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict, path: Path, buffers: bool = False) -> None:
    """A scripted module holding `state` under its dotted names, as parameters (or buffers: any dtype)."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if part not in module._modules:
                module.add_module(part, _Holder())
            module = module._modules[part]
        if buffers:
            module.register_buffer(leaf, value)
        else:
            module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    torch.jit.script(root).save(str(path))


def test_openai_torchscript_backbone(tmp_path):
    cfg = small_config("openai-clip-vit-b16")
    tensors = small_tensors(cfg, seed=6)
    backbone, adapter = authors_files(cfg, tensors)
    _torchscript_archive(backbone, tmp_path / "ViT-B-16.pt")
    torch.save(adapter, tmp_path / "a.pth")
    _, imported = small_import("openai-clip-vit-b16", tmp_path / "ViT-B-16.pt", tmp_path / "a.pth")
    assert all(torch.equal(imported[k], tensors[k]) for k in tensors)


@pytest.fixture
def biomed_files(tmp_path):
    cfg = small_config("biomedclip-vit-b16")
    tensors = small_tensors(cfg, seed=7)
    backbone, adapter = authors_files(cfg, tensors)
    return tmp_path, backbone, adapter


def _save_and_import(tmp_path, backbone, adapter, arch="biomedclip-vit-b16", task="seg", **kwargs):
    torch.save(backbone, tmp_path / "b.pt")
    torch.save(adapter, tmp_path / "a.pth")
    return small_import(arch, tmp_path / "b.pt", tmp_path / "a.pth", task, **kwargs)


def test_wrong_arch_is_refused(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    with pytest.raises(CheckpointError, match=r"missing key\(s\).*visual\.conv1\.weight"):
        _save_and_import(tmp_path, backbone, adapter, arch="openai-clip-vit-b16")


def test_missing_key_is_named(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    del backbone["visual.trunk.blocks.2.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"backbone: 1 missing key\(s\): visual\.trunk\.blocks\.2\.attn\.qkv"):
        _save_and_import(tmp_path, backbone, adapter)


def test_missing_adapter_key_is_named(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    del adapter["mona"]["clip_model.visual.trunk.blocks.1.mona.clip_mona.adapter_conv.freq_filter"]
    with pytest.raises(CheckpointError, match=r"mona: 1 missing key\(s\): .*blocks\.1\.mona\.clip_mona\.adapter_conv"):
        _save_and_import(tmp_path, backbone, adapter)


def test_extra_key_is_named(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    adapter["reduces"]["3.weight"] = torch.randn(24, 48)
    with pytest.raises(CheckpointError, match=r"reduces: 1 unexpected key\(s\): 3\.weight"):
        _save_and_import(tmp_path, backbone, adapter)


def test_wrong_shape_is_named(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    adapter["blocks"]["0.1.weight"] = torch.randn(24, 25)
    with pytest.raises(CheckpointError, match=r"blocks: 1 misshaped key\(s\): 0\.1\.weight \(24, 25\)≠\(24, 24\)"):
        _save_and_import(tmp_path, backbone, adapter)


def test_wrong_task_and_class_count(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    with pytest.raises(CheckpointError, match=r"holds a 'seg_head' but --task cls"):
        _save_and_import(tmp_path, backbone, adapter, task="cls")
    with pytest.raises(CheckpointError, match=r"--num-classes 5 but the seg_head .* has 3 outputs"):
        _save_and_import(tmp_path, backbone, adapter, num_classes=5)


def test_nan_weights_are_refused(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    backbone["visual.trunk.blocks.0.norm1.weight"][3] = float("nan")
    with pytest.raises(CheckpointError, match=r"norm1\.weight holds NaN"):
        _save_and_import(tmp_path, backbone, adapter)


def test_truncated_file_is_refused(biomed_files):
    tmp_path, backbone, adapter = biomed_files
    torch.save(backbone, tmp_path / "b.pt")
    data = (tmp_path / "b.pt").read_bytes()
    (tmp_path / "b.pt").write_bytes(data[: len(data) // 2])
    torch.save(adapter, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match=r"backbone file .* could not be loaded safely"):
        small_import("biomedclip-vit-b16", tmp_path / "b.pt", tmp_path / "a.pth")


class _Payload:
    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_code_executing_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    payload = _Payload()
    payload.marker = str(marker)
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"reduces": payload}, handle)
    cfg = small_config("biomedclip-vit-b16")
    backbone, _ = authors_files(cfg, small_tensors(cfg, seed=8))
    torch.save(backbone, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="pickle that would run code"):
        small_import("biomedclip-vit-b16", tmp_path / "b.pt", tmp_path / "evil.pth")
    assert not marker.exists()


def test_cli_failure_leaves_no_output(tmp_path, capsys):
    cfg = small_config("metaclip-vit-b16")
    backbone, adapter = authors_files(cfg, small_tensors(cfg, seed=9))
    torch.save(backbone, tmp_path / "b.pt")
    torch.save(adapter, tmp_path / "a.pth")
    out = tmp_path / "out" / "m.htpkg"
    code = main(["import", "--arch", "metaclip-vit-b16", "--backbone", str(tmp_path / "b.pt"), "--adapter",
                 str(tmp_path / "a.pth"), "--task", "seg", "--out", str(out)])
    assert code != 0
    assert "misshaped" in capsys.readouterr().err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_backbone_saved_with_injected_adapters(tmp_path):
    cfg = small_config("biomedclip-vit-b16")
    tensors = small_tensors(cfg, seed=12)
    backbone, adapter = authors_files(cfg, tensors)
    backbone.update({k[len("clip_model."):]: torch.zeros_like(v) for k, v in adapter["mona"].items()})
    _, imported = _save_and_import(tmp_path, backbone, adapter)
    assert all(torch.equal(imported[k], tensors[k]) for k in tensors)


def test_activation_override(tmp_path):
    cfg = small_config("metaclip-vit-b16")
    backbone, adapter = authors_files(cfg, small_tensors(cfg, seed=13))
    imported_cfg, _ = _save_and_import(tmp_path, backbone, adapter, arch="metaclip-vit-b16", activation="gelu")
    assert imported_cfg.act == "gelu"


class _SelfRestoring(nn.Module):
    """A scripted module whose `__setstate__` is code: torch.jit.load would run it at import."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(3))

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return self.weight, self.training

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        print("code from the checkpoint ran")
        self.weight = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_torchscript_setstate_is_refused_and_not_run(tmp_path, capfd):
    cfg = small_config("openai-clip-vit-b16")
    backbone, adapter = authors_files(cfg, small_tensors(cfg, seed=6))
    root = _Holder()
    root.add_module("evil", _SelfRestoring())
    for key, value in backbone.items():
        root.register_buffer(key.replace(".", "_"), value)
    torch.jit.script(root).save(str(tmp_path / "ViT-B-16.pt"))
    torch.save(adapter, tmp_path / "a.pth")
    code = main(["import", "--arch", "openai-clip-vit-b16", "--backbone", str(tmp_path / "ViT-B-16.pt"),
                 "--adapter", str(tmp_path / "a.pth"), "--task", "seg", "--out", str(tmp_path / "m.htpkg")])
    captured = capfd.readouterr()
    assert "code from the checkpoint ran" not in captured.out + captured.err
    assert code == 2
    assert "evil" in captured.err and "__setstate__" in captured.err and "refused" in captured.err
    assert not (tmp_path / "m.htpkg").exists()


def test_torchscript_reader_equals_jit_state_dict(tmp_path):
    """Half, bool and int storages, buffers, views sharing one storage, a strided view, an empty tensor."""
    base = torch.randn(6, 10)
    state = {"visual.a.weight": torch.randn(5, 7).half(), "visual.a.mask": torch.rand(4) > 0.5,
             "visual.b.ids": torch.arange(9, dtype=torch.int64).reshape(3, 3), "visual.b.view": base[1:4],
             "visual.c.strided": base[:, ::3], "visual.c.empty": torch.empty(0, 4), "logit_scale": torch.tensor(4.6)}
    _torchscript_archive(state, tmp_path / "m.pt", buffers=True)
    expected = dict(torch.jit.load(str(tmp_path / "m.pt")).state_dict())  # our own archive: trusted in this test
    got = read_torchscript_state_dict(tmp_path / "m.pt")
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", ["os.system", "truncated", "short storage"])
def test_hostile_torchscript_archives_are_refused(tmp_path, payload):
    cfg = small_config("openai-clip-vit-b16")
    backbone, _ = authors_files(cfg, small_tensors(cfg, seed=6))
    _torchscript_archive(backbone, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as source, zipfile.ZipFile(tmp_path / "bad.pt", "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                if payload == "os.system":
                    data = pickle.dumps(_Shell(), protocol=2)
                elif payload == "truncated":
                    data = data[: len(data) // 2]
            elif payload == "short storage" and info.filename.endswith("/data/0"):
                data = data[:-4]
            target.writestr(info, data)
    match = {"os.system": r"refers to (posix|os)\.system, which is refused", "truncated": "cannot be read",
             "short storage": r"data/0 holds \d+ bytes, expected \d+ .*truncated or altered"}[payload]
    with pytest.raises(CheckpointError, match=match):
        read_torchscript_state_dict(tmp_path / "bad.pt")
