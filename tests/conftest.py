"""Shared test fixtures: where the parity fixtures live."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fixtures_root() -> Path:
    """`HARNESS_FIXTURES_DIR`, else the repository's own copy, `tests/fixtures` (see its README)."""
    return Path(os.environ.get("HARNESS_FIXTURES_DIR", ROOT / "tests" / "fixtures"))


def manifests(kind: str) -> list[Path]:
    """Every manifest.json of that kind under the fixtures root, so a new folder is covered without code."""
    import json

    root = fixtures_root()
    found = [p for p in sorted(root.rglob("manifest.json")) if json.loads(p.read_text()).get("kind") == kind]
    if not found:  # never let a parametrized parity test collect zero cases and pass silently
        raise RuntimeError(f"no {kind} fixtures (manifest.json) under {root}; set HARNESS_FIXTURES_DIR")
    return found


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    if not root.is_dir():
        pytest.fail(f"parity fixtures not found at {root}; set HARNESS_FIXTURES_DIR")
    return root


@pytest.fixture(autouse=True)
def _private_weight_digests(tmp_path, monkeypatch):
    """Each test records checkpoint hashes (the weights lock and the sha256 cache beside it) in its own folder."""
    monkeypatch.setenv("HARNESS_WEIGHTS_LOCK", str(tmp_path / "digests" / "weights.lock.json"))
