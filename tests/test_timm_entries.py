"""The `timm` entry kind: architecture, prefix tokens and transform from timm's pretrained configuration, weights
through timm's own loading, offline mode respected, and the I-JEPA context-encoder warning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch

import harness
from harness.errors import HarnessError
from harness.registry import load_registry

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def test_entries_take_their_transform_and_layout_from_timm():
    reg = load_registry()
    for name, entry in reg.backbones.items():
        if entry.family != "timm":
            continue
        cfg = timm.models.get_pretrained_cfg(entry.arch)
        assert (entry.img_size, entry.mean, entry.std) == (cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std)), name
        assert (entry.crop_pct, entry.interpolation) == (cfg.crop_pct, cfg.interpolation), name
        with torch.device("meta"):
            model = timm.create_model(entry.arch, pretrained=False, num_classes=0)
        assert entry.num_prefix_tokens == model.num_prefix_tokens, name
        assert entry.patch_size == model.patch_embed.patch_size[0], name
        assert ("context encoder" in entry.warning) == ("ijepa" in entry.arch), name
    assert reg.backbone("timm-dinov2-vit-l14-reg4").num_prefix_tokens == 5


@pytest.mark.parametrize("name", ["timm-dinov2-vit-l14-reg4", "timm-mae-vit-b16"])
def test_saved_state_dict_gives_timms_own_forward_exactly(tmp_path, monkeypatch, name):
    """Offline: a state dict saved from timm's model of the tag (shrunk) loads through the entry and gives the tokens
    of timm's own forward_features, bit for bit; nothing is fetched."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    entry = load_registry().backbone(name)
    reference = timm.create_model(entry.arch.split(".")[0], pretrained=False, num_classes=0, **TINY).eval()
    torch.save(reference.state_dict(), tmp_path / "saved.pth")
    bb = harness.load_backbone(name, tmp_path / "saved.pth", **TINY)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.forward_features(x)
    assert torch.equal(bb.forward_tokens(x), expected)
    assert bb.num_prefix_tokens == entry.num_prefix_tokens and expected.shape[1] == 16 + entry.num_prefix_tokens


def test_offline_without_a_cached_file_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HarnessError, match=r"backbone 'timm-mae-vit-b16' \(timm vit_base_patch16_224.mae.*"
                                           r"timm/vit_base_patch16_224.mae/model.safetensors is not in the Hugging "
                                           r"Face cache and offline mode .* accepted: .*--weights"):
        harness.load_backbone("timm-mae-vit-b16")


def test_wrong_file_and_checkpoint_key_are_user_errors(tmp_path):
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(HarnessError, match=r"other.pth: timm could not load it into vit_base_patch16_224.mae"):
        harness.load_backbone("timm-mae-vit-b16", tmp_path / "other.pth", **TINY)
    with pytest.raises(HarnessError, match="loaded by timm.*no checkpoint_key"):
        harness.load_backbone("timm-mae-vit-b16", tmp_path / "other.pth", checkpoint_key="model")


def test_ijepa_through_timm_warns_of_the_context_encoder(tmp_path):
    entry = load_registry().backbone("timm-ijepa-vit-h14")
    reference = timm.create_model(entry.arch.split(".")[0], pretrained=False, num_classes=0, **TINY)
    torch.save(reference.state_dict(), tmp_path / "saved.pth")
    with pytest.warns(UserWarning, match="context encoder"):
        harness.load_backbone("timm-ijepa-vit-h14", tmp_path / "saved.pth", **TINY)


def test_timm_entry_may_not_restate_timms_fields(tmp_path, monkeypatch):
    (tmp_path / "mine" / "backbones").mkdir(parents=True)
    path = tmp_path / "mine" / "backbones" / "mine.toml"
    path.write_text('["mine"]\nfamily = "timm"\narch = "vit_base_patch16_224.mae"\nimg_size = 448\n')
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(tmp_path / "mine"))
    with pytest.raises(HarnessError, match=rf"{path}: field 'mine.img_size' is set, but a timm entry takes it from "
                                           "timm's pretrained configuration"):
        load_registry()


def test_a_warm_config_cache_keeps_registry_reads_free_of_torch(tmp_path):
    """Only the first read of a tag this timm version's shipped answers lack (a user's entry, or any entry after a
    timm upgrade) imports timm; the built-in entries' answers ship with the registry."""
    users = tmp_path / "users" / "backbones"
    users.mkdir(parents=True)
    (users / "mine.toml").write_text('["my-timm-dino"]\nfamily = "timm"\narch = "vit_small_patch16_224.dino"\n')
    cache = tmp_path / "cache"
    code = ("import sys, harness.registry; harness.registry.load_registry(); "
            "print('torch' in sys.modules)")
    runs = []
    for users_dir in (None, users.parent, users.parent):
        env = {**os.environ, "HARNESS_TIMM_CONFIGS": str(cache)}
        env.pop("HARNESS_USER_REGISTRY", None)
        if users_dir is not None:
            env["HARNESS_USER_REGISTRY"] = str(users_dir)
        runs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env=env).stdout.strip())
    assert runs == ["False", "True", "False"]
    assert [p.name for p in cache.iterdir()] == [f"timm-{timm.__version__}.json"]
