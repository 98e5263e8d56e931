"""Content, not names, decides what a file is: token cache entries are verified against the checksum and identity
they were written with, weights given by path are identified by their sha256, and released checkpoints are checked
against the lock file recorded at their first use."""

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
