"""Released checkpoints are checked against the digest their publisher gives (MAE's md5 prefixes, DINOv3's
torch.hub-style sha256 prefixes in the file name) when they are downloaded or loaded; a file that does not begin with
it is refused, naming the file, the expected and the found digest, and is never pinned in the weights lock."""

import hashlib
import json
import os
import re

import pytest

from harness.config import setting
from harness.errors import HarnessError
from harness.models import digests
from harness.models.weights import resolve_weights
from harness.registry import load_registry

CONTENT = b"a tiny released checkpoint, as its publisher released it"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _registry(tmp_path, monkeypatch, digest: str, url: str | None = None) -> None:
    """A user registry with one released entry, `tiny-release`, whose publisher gives `digest`."""
    (tmp_path / "user" / "backbones").mkdir(parents=True)
    (tmp_path / "user" / "backbones" / "tiny.toml").write_text(
        f'["tiny-release"]\nextends = "mae-vit-b16"\nfilename = "tiny_release.pth"\npublished_digest = "{digest}"\n'
        + (f'url = "{url}"\n' if url else ""))
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(tmp_path / "user"))
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HARNESS_DOWNLOAD_DIR", str(tmp_path / "cache"))
    (tmp_path / "weights").mkdir()


def _lock() -> dict:
    path = setting("weights_lock")
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_file_beginning_with_its_published_md5_prefix_is_accepted(tmp_path, monkeypatch):
    _registry(tmp_path, monkeypatch, f"md5:{_md5(CONTENT)[:6]}")
    (tmp_path / "weights" / "tiny_release.pth").write_bytes(CONTENT)
    path, sha = resolve_weights(load_registry().backbone("tiny-release"))
    assert sha == hashlib.sha256(CONTENT).hexdigest() and _lock()["tiny-release"]["sha256"] == sha


def test_one_flipped_byte_is_refused_naming_file_expected_and_found(tmp_path, monkeypatch):
    prefix = _md5(CONTENT)[:6]
    _registry(tmp_path, monkeypatch, f"md5:{prefix}")
    flipped = bytearray(CONTENT)
    flipped[20] ^= 0x01
    assert not _md5(bytes(flipped)).startswith(prefix)
    target = tmp_path / "weights" / "tiny_release.pth"
    target.write_bytes(bytes(flipped))
    with pytest.raises(HarnessError) as info:
        resolve_weights(load_registry().backbone("tiny-release"))
    message = str(info.value)
    assert str(target) in message and f"md5 is {_md5(bytes(flipped))}" in message and prefix in message
    assert "Delete it and download it again" in message and "\n" not in message
    assert "tiny-release" not in _lock(), "a file the publisher's digest refuses is never pinned"


def test_the_published_digest_is_computed_once_per_file_content(tmp_path, monkeypatch):
    _registry(tmp_path, monkeypatch, f"md5:{_md5(CONTENT)[:6]}")
    target = tmp_path / "weights" / "tiny_release.pth"
    target.write_bytes(CONTENT)
    calls = []
    real = digests.digest_of
    monkeypatch.setattr(digests, "digest_of", lambda p, algorithm: calls.append(algorithm) or real(p, algorithm))
    entry = load_registry().backbone("tiny-release")
    resolve_weights(entry)
    resolve_weights(entry)
    assert sorted(calls) == ["md5", "sha256"]  # the rerun reads neither digest again
    target.write_bytes(CONTENT[::-1])
    os.utime(target, ns=(1, 1))
    with pytest.raises(HarnessError, match="md5 is"):
        resolve_weights(entry)
    assert calls.count("md5") == 2


def test_a_download_that_misses_the_published_digest_keeps_nothing(tmp_path, monkeypatch):
    source = tmp_path / "published.pth"
    source.write_bytes(CONTENT)
    wrong = "0" * 6 if not _md5(CONTENT).startswith("0" * 6) else "f" * 6
    _registry(tmp_path, monkeypatch, f"md5:{wrong}", url=source.as_uri())
    with pytest.raises(HarnessError, match=rf"downloaded file has md5 {_md5(CONTENT)}, but .* registers {wrong}; "
                                           "nothing was kept"):
        resolve_weights(load_registry().backbone("tiny-release"))
    assert list((tmp_path / "cache").iterdir()) == [] and "tiny-release" not in _lock()


def test_a_download_that_matches_is_kept_and_not_hashed_again(tmp_path, monkeypatch):
    source = tmp_path / "published.pth"
    source.write_bytes(CONTENT)
    _registry(tmp_path, monkeypatch, f"md5:{_md5(CONTENT)[:8]}", url=source.as_uri())
    entry = load_registry().backbone("tiny-release")
    path, sha = resolve_weights(entry)
    assert path == tmp_path / "cache" / "tiny_release.pth" and sha == hashlib.sha256(CONTENT).hexdigest()
    monkeypatch.setattr(digests, "digest_of", lambda *a: pytest.fail("hashed again after the download"))
    assert resolve_weights(entry) == (path, sha)


@pytest.mark.parametrize("value", ["8cad7c", "md5:8CAD7C", "md5:8cad", "md5:" + "0" * 33, "crc32:8cad7c12",
                                   "sha256:" + "g" * 8, "md5:"])
def test_a_malformed_published_digest_is_refused_with_file_field_and_accepted(tmp_path, monkeypatch, value):
    _registry(tmp_path, monkeypatch, value)
    with pytest.raises(HarnessError) as info:
        load_registry()
    message = str(info.value)
    assert str(tmp_path / "user" / "backbones" / "tiny.toml") in message
    assert "'tiny-release.published_digest'" in message and "accepted: '<algorithm>:<hex prefix>'" in message


def test_the_publishers_digests_are_registered_and_belong_to_their_own_file(tmp_path, monkeypatch):
    reg = load_registry()
    # facebookresearch/mae README, "pre-trained checkpoint" table, row "md5"
    assert {n: reg.backbone(n).published_digest for n in ("mae-vit-b16", "mae-vit-l16", "mae-vit-h14")} == {
        "mae-vit-b16": "md5:8cad7c", "mae-vit-l16": "md5:b8b06e", "mae-vit-h14": "md5:9bdbb0"}
    dinov3 = [e for e in reg.backbones.values() if e.family == "dinov3" and not e.random_init]
    assert dinov3
    for entry in dinov3:  # torch.hub's naming: `<name>-<first hex digits of the sha256>.pth`
        suffix = re.search(r"-([0-9a-f]{8})\.pth$", entry.filename)
        assert suffix and entry.published_digest == f"sha256:{suffix.group(1)}"
    (tmp_path / "user" / "backbones").mkdir(parents=True)
    (tmp_path / "user" / "backbones" / "mine.toml").write_text('["mine"]\nextends = "mae-vit-b16"\n'
                                                                'filename = "mine.pth"\n')
    monkeypatch.setenv("HARNESS_USER_REGISTRY", str(tmp_path / "user"))
    assert load_registry().backbone("mine").published_digest is None, "a digest is its own file's, not inherited"
