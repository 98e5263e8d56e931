"""The family-specific rules of DINOv2, DINOv3 and MoCo v3 that parity alone would not pin down: each one is
checked against the official reference, and the tempting wrong variant is shown to miss it."""

from __future__ import annotations

import json

import pytest
import torch

import harness
from harness.errors import HarnessError
from harness.models.families.dinov2 import RESIZE_RULES, resize_pos_embed
from conftest import fixtures_root
from test_backbones import FAMILY_ENTRY, _overrides


def _fixture(family: str) -> tuple[dict, dict, object]:
    folder = fixtures_root() / "backbones" / family
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest, torch.load(folder / "reference.pt", weights_only=True), folder


@pytest.mark.parametrize("family, wrong", [("dinov2", "dinov2_reg"), ("dinov2_reg", "dinov2")])
def test_position_table_is_resized_by_the_familys_rule(family, wrong):
    """The official resample of the file's table to x's grid, and the other family's rule missing it."""
    manifest, ref, folder = _fixture(family)
    pos = torch.load(folder / manifest["checks"][0]["file"], weights_only=True)["pos_embed"]
    side = manifest["arch"]["img_size"] // manifest["arch"]["patch_size"]
    assert pos.shape[1] - 1 == manifest["arch"]["pos_embed_grid_in_checkpoint"][0] ** 2
    assert RESIZE_RULES[family] == (manifest["arch"]["interpolate_offset"], manifest["arch"]["interpolate_antialias"])
    right = resize_pos_embed(pos, (side, side), *RESIZE_RULES[family])
    assert (right - ref["pos_embed_at_input"]).abs().max() <= manifest["tolerance"]
    assert (resize_pos_embed(pos, (side, side), *RESIZE_RULES[wrong]) - right).abs().max() > 100 * manifest["tolerance"]
    assert resize_pos_embed(pos, tuple(manifest["arch"]["pos_embed_grid_in_checkpoint"]), 0.1, False) is pos


def _dinov3(**kwargs):
    manifest, ref, folder = _fixture("dinov3")
    file = folder / manifest["checks"][0]["file"]
    return manifest, ref, file, harness.load_backbone(FAMILY_ENTRY["dinov3"], file, **_overrides(manifest), **kwargs)


def test_dinov3_uses_the_files_rope_periods():
    manifest, ref, file, bb = _dinov3()
    stored = torch.load(file, weights_only=True)["rope_embed.periods"]
    assert stored.dtype == torch.bfloat16 and torch.equal(bb.model.rope.periods, stored.float())
    assert (bb.forward_tokens(ref["x"]) - ref["tokens"]).abs().max() <= manifest["tolerance"]
    with torch.no_grad():
        bb.model.rope.periods.copy_(bb.model.rope._compute_periods())  # timm's float32 recomputation
    assert (bb.forward_tokens(ref["x"]) - ref["tokens"]).abs().max() > 10 * manifest["tolerance"]


def test_dinov3_unmasked_key_bias_is_refused(tmp_path):
    manifest, _, file, _ = _dinov3()
    sd = torch.load(file, weights_only=True)
    for key in [k for k in sd if k.endswith(".bias_mask")]:
        del sd[key]
    bad = tmp_path / "dinov3_unmasked.pth"
    torch.save(sd, bad)
    with pytest.raises(HarnessError, match=r"dinov3_unmasked.pth: does not fit backbone 'dinov3-vit-b16'.*key third "
                                           r".*accepted: a dinov3 release file"):
        harness.load_backbone(FAMILY_ENTRY["dinov3"], bad, **_overrides(manifest))


def test_mocov3_names_its_encoders_when_the_key_is_wrong():
    manifest, _, folder = _fixture("mocov3")
    file = folder / manifest["checks"][0]["file"]
    with pytest.raises(HarnessError, match=r"no state dict at key 'predictor'.*keys present: arch, epoch, optimizer, "
                                           r"state_dict.*sub-networks: base_encoder, momentum_encoder"):
        harness.load_backbone(FAMILY_ENTRY["mocov3"], file, checkpoint_key="predictor", **_overrides(manifest))


def test_gated_dinov3_file_says_where_to_get_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(HarnessError, match=r"backbone 'dinov3-vit-b16'.*dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth "
                                           r"cannot be downloaded by script.*ai\.meta\.com.*put it at "
                                           + str(tmp_path / "weights")):
        harness.load_backbone("dinov3-vit-b16")


def test_another_familys_file_names_the_entry_the_file_and_what_is_accepted():
    manifest, _, folder = _fixture("dinov2")
    file = folder / manifest["checks"][0]["file"]
    with pytest.raises(HarnessError, match=rf"{file}: does not fit backbone 'dinov3-vit-b16' .*key third of the qkv "
                                           r"bias.*accepted: a dinov3 release file"):
        harness.load_backbone(FAMILY_ENTRY["dinov3"], file, **_overrides(manifest))
    with pytest.raises(HarnessError, match=r"does not fit backbone 'dinov2-vit-b14' .*unexpected keys: reg_token"):
        harness.load_backbone(FAMILY_ENTRY["dinov2"], fixtures_root() / "backbones" / "dinov2_reg" /
                              "dinov2_vittiny_reg4_pretrain.pth", **_overrides(manifest))
