"""`clip`: CLIP-style attention pool with a learned position table of feat_size^2 + 1 rows (patch tokens only)."""

from __future__ import annotations

from harness.heads.kinds import Kind, Option, positive_int, register


def why_not(feat_size: int, num_patches: int) -> str:
    return (f"aggregator kind 'clip' adds a learned position table of feat_size^2 + 1 = {feat_size ** 2 + 1} rows "
            f"(feat_size {feat_size}), so it reads exactly {feat_size ** 2} patch tokens; this backbone gives "
            f"{num_patches} (set options.feat_size to the side of a square patch grid)")


def refuse(opts: dict, num_patches: int | None, width: int | None) -> str | None:
    return None if num_patches is None or num_patches == opts["feat_size"] ** 2 else why_not(opts["feat_size"],
                                                                                          num_patches)


register(Kind(name="clip", pooler="harness.heads.pool.clip:build", refuse=refuse, options={
    "feat_size": Option(14, "a positive integer, the side of the backbone's square patch grid (efficient probing "
                        "hard-codes 14)", positive_int)}))
