"""Backbone loaders: parity with each family's official tokens, the frozen-token contract, and refusals of bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import harness
from harness.models.backbones import Backbone, build_model, convert_checkpoint
from harness.errors import HarnessError
from harness.registry import ARCH_OVERRIDE_KEYS, load_registry
from harness.models.digests import sha256_of
from harness.models.weights import file_name, load_checkpoint
from conftest import fixtures_root, manifests

# The registered ViT-B (or, for I-JEPA, ViT-H) entry whose layout each family's parity fixture shares.
FAMILY_ENTRY = {"mae": "mae-vit-b16", "simmim": "simmim-vit-b16", "dino": "dino-vit-b16", "ibot": "ibot-vit-b16",
                "ijepa": "ijepa-vit-h14-in1k", "dinov2": "dinov2-vit-b14", "dinov2_reg": "dinov2-vit-b14-reg4",
                "dinov3": "dinov3-vit-b16", "mocov3": "mocov3-vit-b16"}
DEMOS = ["demo-mae-tiny", "demo-simmim-tiny", "demo-dino-tiny", "demo-ibot-tiny", "demo-ijepa-tiny"]


def _checks() -> list:
    cases = []
    for path in manifests("backbone"):
        manifest = json.loads(path.read_text())
        for check in manifest["checks"]:
            key = "default" if check["is_family_default"] else check["checkpoint_key"]
            cases.append(pytest.param(path, manifest, check, id=f"{manifest['family']}/{check['file']}[{key}]"))
    return cases


def _overrides(manifest: dict) -> dict:
    return {k: v for k, v in manifest["arch"].items() if k in ARCH_OVERRIDE_KEYS}


def _fixture(family: str) -> tuple[dict, Path]:
    path = fixtures_root() / "backbones" / family / "manifest.json"
    if not path.is_file():
        pytest.fail(f"parity fixture {path} is missing; set HARNESS_FIXTURES_DIR")
    return json.loads(path.read_text()), path.parent


def _load(family: str, file: str, **kwargs) -> Backbone:
    manifest, folder = _fixture(family)
    return harness.load_backbone(FAMILY_ENTRY[family], folder / file, **_overrides(manifest), **kwargs)


def _reference(family: str) -> dict:
    return torch.load(_fixture(family)[1] / "reference.pt", weights_only=True)


def test_fixtures_are_discovered(fixtures_dir):
    families = {json.loads(p.read_text())["family"] for p in manifests("backbone")}
    assert families == set(FAMILY_ENTRY), f"backbone fixtures under {fixtures_dir} cover {sorted(families)}"


@pytest.mark.parity
@pytest.mark.parametrize("manifest_path, manifest, check", _checks())
def test_parity_with_official_tokens(manifest_path, manifest, check):
    key = None if check["is_family_default"] else check["checkpoint_key"]
    bb = harness.load_backbone(FAMILY_ENTRY[manifest["family"]], manifest_path.parent / check["file"],
                               checkpoint_key=key, **_overrides(manifest))
    ref = torch.load(manifest_path.parent / "reference.pt", weights_only=True)
    out = bb.forward_taps(ref["x"].float(), ["norm", "prenorm"])
    assert out["norm"].shape[1] == manifest["arch"]["num_tokens"]
    assert bb.num_prefix_tokens == _num_prefix_tokens(manifest) == bb.entry.num_prefix_tokens
    for tap, name in (("norm", check["expect_tokens"]), ("prenorm", check["expect_tokens_prenorm"])):
        err = (out[tap] - ref[name]).abs().max().item()
        assert err <= manifest["tolerance"], f"{tap} vs {name}: max abs error {err}"
    assert bb.weights_sha256 == sha256_of(manifest_path.parent / check["file"])


def _num_prefix_tokens(manifest: dict) -> int:
    """[cls] plus registers; manifests of families without registers only say whether there is a [cls]."""
    return manifest["arch"].get("num_prefix_tokens", int(manifest["arch"]["class_token"]))


def _other_inputs() -> list:
    """Each extra input a fixture's reference holds (`<name>.x` with `<name>.tokens*`: another size or shape)."""
    cases = []
    for path in manifests("backbone"):
        manifest = json.loads(path.read_text())
        ref = torch.load(path.parent / "reference.pt", weights_only=True)
        cases += [pytest.param(path, manifest, key[:-2], id=f"{manifest['family']}/{key[:-2]}")
                  for key in sorted(ref) if key.endswith(".x")]
    return cases


@pytest.mark.parity
@pytest.mark.parametrize("manifest_path, manifest, name", _other_inputs())
def test_parity_at_another_input_size(manifest_path, manifest, name):
    """A square input of another size is evaluated by a model built at that size (DINOv2: the file's own grid, so
    no resampling); a non-square one by the model built at the fixture's size (DINOv3's RoPE takes any grid)."""
    ref = torch.load(manifest_path.parent / "reference.pt", weights_only=True)
    x = ref[f"{name}.x"].float()
    height, width = x.shape[-2:]
    overrides = {**_overrides(manifest), **({"img_size": height} if height == width else {})}
    check = next(c for c in manifest["checks"] if c["is_family_default"])
    bb = harness.load_backbone(FAMILY_ENTRY[manifest["family"]], manifest_path.parent / check["file"], **overrides)
    out = bb.forward_taps(x, ["norm", "prenorm"])
    patch = manifest["arch"]["patch_size"]
    assert out["norm"].shape[1] == (height // patch) * (width // patch) + _num_prefix_tokens(manifest)
    for tap, key in (("norm", f"{name}.tokens"), ("prenorm", f"{name}.tokens_prenorm")):
        err = (out[tap] - ref[key]).abs().max().item()
        assert err <= manifest["tolerance"], f"{tap} vs {key}: max abs error {err}"


@pytest.mark.parity
@pytest.mark.parametrize("family, other", [("ijepa", "encoder"), ("dino", "student"), ("ibot", "student"),
                                           ("mocov3", "momentum_encoder")])
def test_default_is_the_evaluated_subnetwork(family, other):
    """I-JEPA defaults to the target encoder, DINO/iBOT to the teacher, MoCo v3 to the base encoder; the other
    sub-network gives other tokens."""
    manifest, _ = _fixture(family)
    full = next(c for c in manifest["checks"] if c["checkpoint_key"] == other)
    ref = _reference(family)
    default = _load(family, full["file"]).forward_tokens(ref["x"])
    explicit = _load(family, full["file"], checkpoint_key=other).forward_tokens(ref["x"])
    assert torch.allclose(default, ref["tokens"], atol=manifest["tolerance"], rtol=0)
    assert (default - explicit).abs().max() > 100 * manifest["tolerance"]


@pytest.mark.parametrize("name", DEMOS)
def test_random_init_is_deterministic_and_frozen(name):
    before = torch.get_rng_state()
    a, b = harness.load_backbone(name), harness.load_backbone(name)
    assert torch.equal(torch.get_rng_state(), before), "building a backbone must not move the global RNG"
    x = torch.randn(2, 3, a.entry.img_size, a.entry.img_size)
    assert torch.equal(a.forward_tokens(x), b.forward_tokens(x))
    assert a.weights_sha256 == "random-init" and not a.training
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training
    tokens = (a.entry.img_size // a.entry.patch_size) ** 2 + a.num_prefix_tokens
    assert a.forward_tokens(x).shape == (2, tokens, a.embed_dim)
    assert a.num_prefix_tokens == int(a.entry.class_token)
    assert (a.embed_dim, a.depth, a.num_heads) == (64, 2, 2)


@pytest.mark.parametrize("name", ["demo-mae-tiny", "demo-simmim-tiny"])
def test_taps_match_tokens_and_run_blocks_once(name):
    bb = harness.load_backbone(name)
    x = torch.randn(2, 3, 32, 32)
    calls = []
    handles = [blk.register_forward_hook(lambda *_: calls.append(1)) for blk in bb.model.blocks]
    taps = bb.forward_taps(x, ["norm", "prenorm"])
    assert len(calls) == bb.depth, "forward_taps must run each block exactly once"
    for h in handles:
        h.remove()
    assert torch.equal(taps["norm"], bb.forward_tokens(x, norm=True))
    assert torch.equal(taps["prenorm"], bb.forward_tokens(x, norm=False))
    assert not torch.equal(taps["norm"], taps["prenorm"])
    assert torch.equal(bb.model.forward_features(x), taps["norm"])


def test_bad_requests_are_harness_errors():
    bb = harness.load_backbone("demo-dino-tiny")
    with pytest.raises(HarnessError, match="accepted: norm, prenorm"):
        bb.forward_taps(torch.zeros(1, 3, 32, 32), ["pooled"])
    with pytest.raises(HarnessError, match="'ln_eps'.*accepted: img_size"):
        harness.load_backbone("demo-dino-tiny", ln_eps=1e-5)
    with pytest.raises(HarnessError, match="reads no weights"):
        harness.load_backbone("demo-dino-tiny", "x.pth")
    with pytest.raises(HarnessError, match="does not exist"):
        harness.load_backbone("dino-vit-b16", "/nonexistent/dino.pth")


def test_code_carrying_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "payload": Payload()}, evil)
    with pytest.raises(HarnessError, match=r"refused to load.*mkdir.*Nothing in the file was run"):
        harness.load_backbone("mae-vit-b16", evil)
    assert not marker.exists()


def test_truncated_file_is_refused(tmp_path):
    _, folder = _fixture("mae")
    data = (folder / "mae_pretrain_vit_tiny.pth").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(HarnessError, match="truncated or corrupt"):
        harness.load_backbone("mae-vit-b16", bad)


def test_wrong_family_lists_key_differences():
    with pytest.raises(HarnessError, match=r"missing keys: blocks.*unexpected keys: decoder.*encoder\.blocks"):
        _load("mae", "../simmim/simmim_pretrain__vit_tiny.pth")
    with pytest.raises(HarnessError, match=r"missing keys: blocks.*unexpected keys: module\.blocks"):
        _load("mae", "../ijepa/IN1K-vit.tiny-300e.pth.tar", checkpoint_key="target_encoder")


def test_absent_checkpoint_key_lists_keys_present():
    with pytest.raises(HarnessError, match=r"no state dict at key 'target_encoder'.*keys present: model"):
        _load("ijepa", "../mae/mae_pretrain_vit_tiny.pth")
    with pytest.raises(HarnessError, match=r"no state dict at key 'student' .*keys present: .*blocks"):
        _load("dino", "dino_vittiny_pretrain.pth", checkpoint_key="student")


def test_converters_state_their_subnetwork():
    manifest, folder = _fixture("ibot")
    ckpt = load_checkpoint(folder / "checkpoint_student.pth")
    sd = convert_checkpoint(ckpt, load_registry().backbone("ibot-vit-b16"))
    assert "masked_embed" in ckpt["state_dict"] and "masked_embed" not in sd
    full = load_checkpoint(folder / "checkpoint.pth")
    teacher = convert_checkpoint(full, load_registry().backbone("ibot-vit-b16"))
    assert not any(k.startswith(("head.", "backbone.")) for k in teacher)
    assert set(teacher) == set(sd)


def _registry_with(tmp_path: Path, extra: str) -> Path:
    """A copy of the registry plus one entry, so sha256 and download paths can be tested on local files."""
    root = tmp_path / "registry"
    shutil.copytree(Path(harness.__file__).resolve().parent.parent / "registry", root)
    (root / "backbones" / "test_extra.toml").write_text(extra)
    return root


def _entry_toml(url: str, sha256: str) -> str:
    return (f'["mae-test"]\nextends = "mae-vit-b16"\nurl = "{url}"\nfilename = "mae_test.pth"\nsha256 = "{sha256}"\n'
            'arch_overrides = { img_size = 32, patch_size = 8, embed_dim = 64, depth = 2, num_heads = 2 }\n')


def test_download_verify_and_resolution_order(tmp_path, monkeypatch):
    _, folder = _fixture("mae")
    src = folder / "mae_pretrain_vit_tiny.pth"
    good = sha256_of(src)
    monkeypatch.setenv("HARNESS_REGISTRY_DIR", str(_registry_with(tmp_path, _entry_toml(src.as_uri(), good))))
    monkeypatch.setenv("HARNESS_DOWNLOAD_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    bb = harness.load_backbone("mae-test")  # downloaded from a file:// address into the cache
    assert bb.weights_sha256 == good and (tmp_path / "cache" / "mae_test.pth").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mae_test.pth"], "no temp file may be left"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mae_test.pth").write_bytes(b"not the registered file")
    with pytest.raises(HarnessError, match=r"weights.mae_test.pth: sha256 is .* registers " + good):
        harness.load_backbone("mae-test")  # the local weights folder comes before the cache


def test_download_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    _, folder = _fixture("mae")
    src = folder / "mae_pretrain_vit_tiny.pth"
    monkeypatch.setenv("HARNESS_REGISTRY_DIR", str(_registry_with(tmp_path, _entry_toml(src.as_uri(), "0" * 64))))
    monkeypatch.setenv("HARNESS_DOWNLOAD_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_WEIGHTS_DIR", raising=False)
    with pytest.raises(HarnessError, match="downloaded file has sha256 .* nothing was kept"):
        harness.load_backbone("mae-test")
    assert list((tmp_path / "cache").iterdir()) == []


def test_manual_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(HarnessError, match=r"cannot be downloaded by script.*microsoft/SimMIM.*put it at "
                                           + str(tmp_path / "weights" / "simmim_pretrain")):
        harness.load_backbone("simmim-vit-b16")


@pytest.mark.parametrize("name", sorted(n for n, e in load_registry().backbones.items() if not e.random_init))
def test_registered_entries_build_their_declared_shape(name):
    """Every released entry's arch has the declared geometry (one block on the meta device keeps this instant)."""
    entry = load_registry().backbone(name)
    with torch.device("meta"):
        model = build_model(entry, depth=1)
    assert model.patch_embed.patch_size == (entry.patch_size, entry.patch_size)
    assert model.patch_embed.img_size == (entry.img_size, entry.img_size)
    assert (model.cls_token is not None) == entry.class_token
    assert model.num_prefix_tokens == entry.num_prefix_tokens
    if entry.family == "timm":  # timm picks the weights and the sub-network (tests/test_timm_entries.py)
        return
    bare = entry.family in ("dinov2", "dinov2_reg", "dinov3")  # the release file is the state dict itself
    assert (entry.checkpoint_key is None) == bare and file_name(entry) and (entry.url or entry.manual_download)
    for key in entry.published:
        assert key.startswith("imagenet-1k/")
