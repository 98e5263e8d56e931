"""Shared test fixtures: where the parity fixtures live."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fixtures_root() -> Path:
    """`HARNESS_FIXTURES_DIR`, else `../shared/fixtures` beside the project."""
    return Path(os.environ.get("HARNESS_FIXTURES_DIR", ROOT.parent / "shared" / "fixtures"))


def manifests(kind: str) -> list[Path]:
    """Every manifest.json of that kind under the fixtures root, so a new folder is covered without code."""
    import json

    found = []
    for path in sorted(fixtures_root().rglob("manifest.json")):
        if json.loads(path.read_text()).get("kind") == kind:
            found.append(path)
    return found


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    if not root.is_dir():
        pytest.fail(f"parity fixtures not found at {root}; set HARNESS_FIXTURES_DIR")
    return root
