"""A sweep's manifest, written beside its rows (`<results>/manifests/<grid>-<UTC start>.json`): the grid file's
text, the resolved grid and the registry entries it used, the package versions, the command line, the commit, and
the hosts and devices Ray gave it. The rows say what each head measured; the manifest says how it was asked for."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path

from harness.registry import Grid, Registry
from harness.registry.describe import plain, record

_PACKAGES = ("harness", "torch", "torchvision", "timm", "ray", "pandas", "pyarrow", "numpy", "scikit-learn")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_sweep(grid: Grid, reg: Registry, *, commit: str, argv: list[str] | None = None) -> dict:
    """Everything about a sweep that is known before it runs."""
    source = Path(grid.defined_in) if grid.defined_in else None
    return {
        "grid": grid.name, "grid_file": str(source) if source else None,
        "grid_text": source.read_text(encoding="utf-8") if source and source.is_file() else None,
        "resolved_grid": plain(dataclasses.asdict(grid)),
        "entries": {"backbones": [record("backbones", reg, b) for b in grid.backbones],
                    "datasets": [record("datasets", reg, d) for d in grid.datasets],
                    "aggregators": [record("aggregators", reg, h.aggregator) for h in grid.heads]},
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "command": list(sys.argv if argv is None else argv), "git_commit": commit,
        "driver_host": platform.node(), "cwd": os.getcwd(),
    }


def write_manifest(root: Path, manifest: dict, *, started: datetime, ended: datetime, nodes: list[dict],
                   summary: dict) -> Path:
    """The manifest with where and when it ran and how it ended, atomically, one file per sweep."""
    folder = Path(root) / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{manifest['grid']}-{started.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
    data = {**manifest, "started_at": started.isoformat(), "ended_at": ended.isoformat(), "nodes": nodes,
            "summary": summary}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
