"""User registry folders: entries, grids, aggregators and datasets added to the built-in registry without editing
the package, and a private checkpoint of a known layout registered that way and evaluated exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import harness
from harness.errors import HarnessError
from harness.registry import load_registry, registry_dir
from conftest import fixtures_root
from test_backbones import _overrides

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "user-registry"


def test_example_folder_adds_to_the_builtin_registry(monkeypatch):
    builtin = load_registry()
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(EXAMPLE))
    reg = load_registry()
    assert set(reg.backbones) == set(builtin.backbones) | {"lab-dinov2-vit-b14"}
    assert set(reg.grid_files) == set(builtin.grid_files) | {"lab"}
    entry, base = reg.backbone("lab-dinov2-vit-b14"), reg.backbone("dinov2-vit-b14")
    assert (entry.family, entry.arch, entry.img_size, entry.mean) == (base.family, base.arch, base.img_size, base.mean)
    assert base.published and not entry.published, "a published number belongs to its own checkpoint"
    assert reg.grid("lab").backbones == ("dinov2-vit-b14", "lab-dinov2-vit-b14")


def test_private_checkpoint_of_a_known_layout_gives_the_official_tokens(tmp_path, monkeypatch):
    """The DINOv2 parity file, saved as a lab's private checkpoint, found by name in the weights folder."""
    folder = fixtures_root() / "backbones" / "dinov2"
    manifest = json.loads((folder / "manifest.json").read_text())
    (tmp_path / "weights").mkdir()
    shutil.copy(folder / manifest["checks"][0]["file"], tmp_path / "weights" / "lab_dinov2_vitb14.pth")
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(EXAMPLE))
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HARNESS_WEIGHTS_LOCK", str(tmp_path / "weights.lock.json"))
    bb = harness.load_backbone("lab-dinov2-vit-b14", **_overrides(manifest))
    ref = torch.load(folder / "reference.pt", weights_only=True)
    assert (bb.forward_tokens(ref["x"]) - ref["tokens"]).abs().max() <= manifest["tolerance"]


def test_user_folder_problems_name_the_folder_or_both_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(tmp_path / "missing"))
    with pytest.raises(HarnessError, match=r"user registry folder .*missing \(from HARNESS_USER_REGISTRY\) does not "
                                           r"exist; accepted: folders holding"):
        load_registry()
    (tmp_path / "mine" / "backbones").mkdir(parents=True)
    clash = tmp_path / "mine" / "backbones" / "clash.toml"
    clash.write_text('["dinov2-vit-b14"]\nextends = "dinov2-vit-s14"\n')
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(tmp_path / "mine"))
    with pytest.raises(HarnessError, match=rf"{clash}: backbone 'dinov2-vit-b14' is already registered in "
                                           rf"{registry_dir() / 'backbones' / 'dinov2.toml'}"):
        load_registry()
