"""Registry entries as plain records, for `harness show` and `harness list --format json`.

One schema per kind: the entry dataclass's fields (tuples as lists), plus, for a backbone, what a user asks
first: the prefix tokens it emits and the checksum status of its weights. Torch-free: `harness list` stays
instant.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.errors import HarnessError
from harness.registry import BackboneEntry, Registry

KINDS = ("backbones", "aggregators", "datasets", "recipes", "grids")


def checksum_status(entry: BackboneEntry, lock: dict) -> str:
    """How a downloaded or local file of this backbone is verified before it is unpickled."""
    if entry.random_init:
        return "none: random-init, no weights"
    if entry.family == "timm":
        return "loaded by timm from the Hugging Face cache or --weights; the file's sha256 is recorded at load"
    if entry.sha256:
        return f"published sha256 {entry.sha256}"
    pinned = lock.get(entry.name, {}).get("sha256") if isinstance(lock.get(entry.name), dict) else None
    algorithm, _, prefix = (entry.published_digest or "").partition(":")
    publisher = (f"the publisher's {algorithm} prefix {prefix} (checked at download and load)" if prefix
                 else "no published sha256")
    if pinned:
        return f"{publisher}; pinned by the weights lock at first use: {pinned}"
    return f"{publisher}; the weights lock pins the file's sha256 at its first use"


def plain(value: Any) -> Any:
    """A dataclass dict made JSON-ready: tuples as lists, recursively."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def record(kind: str, reg: Registry, name: str, lock: dict | None = None) -> dict[str, Any]:
    """The entry `name` of `kind` as a JSON-ready dict (a backbone's checksum status needs the weights lock)."""
    if kind == "recipes":
        from harness.heads.recipes import RECIPES

        return plain(dataclasses.asdict(RECIPES[name]))
    if kind == "grids":
        grid = reg.grid(name)
        return {**plain(dataclasses.asdict(grid)), "num_heads": grid.num_heads}
    entry = {"backbones": reg.backbone, "aggregators": reg.aggregator, "datasets": reg.dataset}[kind](name)
    out = plain(dataclasses.asdict(entry))
    if kind == "backbones":
        out.update(label=entry.label, prefix_tokens=entry.num_prefix_tokens,
                   checksum=checksum_status(entry, lock or {}))
    return out


def _names(reg: Registry) -> dict[str, Any]:
    from harness.heads.recipes import RECIPES

    return {"backbones": reg.backbones, "aggregators": reg.aggregators, "datasets": reg.datasets,
            "recipes": RECIPES, "grids": reg.grid_files}


def records(kind: str, reg: Registry, lock: dict | None = None) -> list[dict[str, Any]]:
    return [record(kind, reg, name, lock) for name in _names(reg)[kind]]


def find(reg: Registry, name: str) -> str:
    """The kind of the entry called `name` (backbones first: names are unique within a kind only)."""
    for kind, known in _names(reg).items():
        if name in known:
            return kind
    raise HarnessError(f"no backbone, aggregator, dataset, recipe or grid is called {name!r}; accepted: a name "
                       "that `harness list` prints.")
