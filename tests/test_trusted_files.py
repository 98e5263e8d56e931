"""Content, not names, decides what a file is: token cache entries are verified against the checksum and identity
they were written with, weights given by path are identified by their sha256, and released checkpoints are checked
against the lock file recorded at their first use."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.tokens.cache import cached_tokens, extract_tokens
from token_fakes import FakeBackbone, digits_val


@pytest.fixture(scope="module")
def digits():
    return digits_val()


def _entry(cache_dir: Path) -> Path:
    (entry,) = [p for p in cache_dir.glob("*/*/*") if not p.name.startswith(".")]
    return entry


def _cache(digits, cache_dir, backbone=None):
    dataset_entry, val = digits
    return cached_tokens(backbone or FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=cache_dir,
                         batch_size=64, device="cpu")


def test_random_bytes_in_a_cached_entry_are_rebuilt_not_trained_on(digits, tmp_path):
    reference, _ = extract_tokens(FakeBackbone(), digits[1], ["norm"], batch_size=64, device="cpu")
    _cache(digits, tmp_path)
    tokens_file = _entry(tmp_path) / "tokens.npy"
    header = len(tokens_file.read_bytes()) - 203 * 5 * 8 * 2
    with open(tokens_file, "r+b") as f:  # random bytes over the data, the header left intact
        f.seek(header)
        f.write(np.random.default_rng(0).bytes(203 * 5 * 8 * 2))
    tokens, passes = _cache(digits, tmp_path)
    assert passes == 203  # rebuilt, not read
    assert torch.equal(tokens.tokens["norm"], reference.tokens["norm"])
    again, passes = _cache(digits, tmp_path)
    assert passes == 0 and torch.equal(again.tokens["norm"], reference.tokens["norm"])


def test_another_backbones_tokens_copied_into_an_entry_are_rebuilt(digits, tmp_path):
    reference, _ = extract_tokens(FakeBackbone(), digits[1], ["norm"], batch_size=64, device="cpu")
    other = FakeBackbone()
    other.weights_sha256 = "cd" * 32
    with torch.no_grad():
        other.proj.weight.mul_(-1)
    _cache(digits, tmp_path / "a")
    _cache(digits, tmp_path / "b", other)
    for name in ("tokens.npy", "labels.npy"):  # same shape, another backbone's numbers
        (_entry(tmp_path / "a") / name).write_bytes((_entry(tmp_path / "b") / name).read_bytes())
    tokens, passes = _cache(digits, tmp_path / "a")
    assert passes == 203 and torch.equal(tokens.tokens["norm"], reference.tokens["norm"])


def test_an_entry_records_its_checksums_and_identity(digits, tmp_path):
    _cache(digits, tmp_path)
    meta = json.loads((_entry(tmp_path) / "meta.json").read_text())
    assert set(meta["sha256"]) == {"tokens.npy", "labels.npy"}
    for key in ("weights_sha256", "dataset", "split", "transform", "tap", "tokens"):
        assert key in meta["key"]


# ------------------------------------------------------------------------------------------------ weights

from harness.models import digests  # noqa: E402
from harness.models.weights import resolve_weights  # noqa: E402
from harness.registry import load_registry  # noqa: E402
from harness.run.plan import expand  # noqa: E402


def test_weights_given_by_path_are_identified_by_content(tmp_path):
    reg = load_registry()
    grid = reg.grid("claim")
    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"first release")
    before = expand(grid, reg, weights={"mae-vit-b16": str(weights)})
    weights.write_bytes(b"second release, same path")
    after = expand(grid, reg, weights={"mae-vit-b16": str(weights)})
    changed = {h.config_hash for t in before for h in t.heads} ^ {h.config_hash for t in after for h in t.heads}
    mae_heads = [h for t in before if t.backbone == "mae-vit-b16" for h in t.heads]
    assert mae_heads and len(changed) == 2 * len(mae_heads)  # every head of that backbone, and only those
    assert {t.weights_sha256 for t in after if t.backbone == "mae-vit-b16"} == {digests.sha256_of(weights)}


def test_a_files_sha256_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    weights = tmp_path / "big.pth"
    weights.write_bytes(b"x" * 1000)
    calls = []
    real = digests.digest_of
    monkeypatch.setattr(digests, "digest_of", lambda p, algorithm: calls.append(p) or real(p, algorithm))
    first = digests.cached_sha256(weights)
    assert digests.cached_sha256(weights) == first and len(calls) == 1  # the rerun does not re-hash
    weights.write_bytes(b"y" * 1000)
    os.utime(weights, ns=(1, 1))
    assert digests.cached_sha256(weights) == hashlib.sha256(b"y" * 1000).hexdigest() != first and len(calls) == 2


def _released(tmp_path, monkeypatch, content: bytes):
    """A released entry without a registered or published digest whose file sits in the local weights folder."""
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir(exist_ok=True)
    entry = load_registry().backbone("dino-vit-b16")
    assert entry.sha256 is None and entry.published_digest is None
    (tmp_path / "weights" / entry.filename).write_bytes(content)
    return entry


def test_released_checkpoint_is_locked_at_first_use_and_a_changed_file_refused(tmp_path, monkeypatch):
    entry = _released(tmp_path, monkeypatch, b"as published")
    path, sha = resolve_weights(entry)
    lock = json.loads(Path(os.environ["HARNESS_WEIGHTS_LOCK"]).read_text())
    assert lock[entry.name]["sha256"] == sha
    with open(path, "r+b") as f:  # one flipped byte
        f.seek(3)
        f.write(b"X")
    with pytest.raises(HarnessError, match=r"weights lock.*harness weights --refresh dino-vit-b16"):
        resolve_weights(entry)
    digests.refresh_lock(entry.name, path)  # a deliberate refresh accepts the new file
    assert resolve_weights(entry)[1] == digests.sha256_of(path)


def test_cli_refreshes_the_weights_lock_deliberately(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    entry = _released(tmp_path, monkeypatch, b"as published")
    path, _ = resolve_weights(entry)
    path.write_bytes(b"a deliberate replacement")
    with pytest.raises(HarnessError):
        resolve_weights(entry)
    assert main(["weights", "--refresh", entry.name]) == 0
    assert resolve_weights(entry)[1] == digests.sha256_of(path)
    assert main(["weights", "--refresh", "demo-mae-tiny"]) == 2


def test_a_trial_refuses_weights_changed_since_planning(tmp_path):
    entry = load_registry().backbone("mae-vit-b16")
    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"planned")
    planned = digests.cached_sha256(weights)
    weights.write_bytes(b"swapped before the trial ran")
    with pytest.raises(HarnessError, match="changed since the sweep was planned"):
        resolve_weights(entry, weights, expected_sha256=planned)
