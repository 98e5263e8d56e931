"""`jepa`: efficient probing's copy of V-JEPA's AttentivePooler (billpsomas/efficient-probing poolings/jepa/, which
is facebookresearch/jepa @ 787b04a; factory: `--num_heads` 16, one query, depth 1). The same cross-attention block
as `query` (harness.heads.aggregators.QueryPool) but with the output projection `xattn.proj` APPLIED, as that
commit's forward does (the later upstream code that `query` follows never applies it)."""

from __future__ import annotations

from harness.heads.aggregators import _CONTENT, QueryPool, _Option, _positive_int
from harness.heads.poolings import Pooling


def _build(dim: int, skip: int, opts: dict) -> tuple[QueryPool, int]:
    return QueryPool(dim, skip, num_heads=opts["num_heads"], num_queries=1, depth=1, mlp_ratio=4.0,
                     out_proj=True), dim


POOLING = Pooling(
    "jepa", {"num_heads": _Option(16, "a positive integer dividing the width (efficient probing's --num_heads)",
                                  _positive_int), "content": _CONTENT}, _build)
