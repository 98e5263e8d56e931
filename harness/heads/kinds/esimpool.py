"""`esimpool`: SimPool without linear layers, 12 heads over slices of the width (which must divide by 12)."""

from __future__ import annotations

from harness.heads.kinds import CONTENT, Kind, register

HEADS = 12


def why_not(width: int) -> str:
    return (f"aggregator kind 'esimpool' splits the width into {HEADS} heads (the official forward raises "
            f"otherwise); the backbone's width {width} is not divisible by {HEADS}")


def refuse(opts: dict, num_patches: int | None, width: int | None) -> str | None:
    return None if width is None or width % HEADS == 0 else why_not(width)


register(Kind(name="esimpool", pooler="harness.heads.pool.esimpool:build", options={"content": CONTENT},
              refuse=refuse))
