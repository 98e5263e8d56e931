"""The poolings of efficient probing's comparison (billpsomas/efficient-probing @ b8f4fb8, `--cls_features <name>`)
besides `ep` and `abmilp`: one module per kind, each reproducing its official module (fixtures under
`aggregators/<name>/`) with the efficient-probing factory's defaults, as a stack of heads (`StackedPool`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Pooling:
    """One kind: its options, how to build its pooler on a backbone, and what it cannot read (for the plan)."""

    kind: str
    options: dict[str, Any]  # name -> aggregators._Option
    build: Callable[[int, int, dict[str, Any]], tuple[nn.Module, int]]  # (width, tokens skipped, options)
    check: Callable[[dict[str, Any], int | None, int | None], str | None] = lambda opts, patches, width: None


@lru_cache(maxsize=None)
def poolings() -> dict[str, Pooling]:
    """Every kind of this package by name (imported on first use: the modules build on harness.heads.aggregators)."""
    from harness.heads.poolings import (aim, cae, cait, cbam, clip, coca, dinovit, dolg, esimpool, jepa, siglip,
                                        simpool)

    found = (simpool, esimpool, clip, siglip, aim, cbam, coca, cait, dinovit, jepa, dolg, cae)
    return {m.POOLING.kind: m.POOLING for m in found}
