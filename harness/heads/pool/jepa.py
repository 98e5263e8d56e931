"""`jepa`: efficient probing's copy of V-JEPA's AttentivePooler (billpsomas/efficient-probing poolings/jepa/, which
is facebookresearch/jepa @ 787b04a; factory: `--num_heads` 16, one query, depth 1). The same cross-attention block
as `query` (harness/heads/pool/query.py) but with the output projection `xattn.proj` APPLIED, as that commit's
forward does (the later upstream code that `query` follows never applies it)."""

from __future__ import annotations

from torch import nn

from harness.heads.kinds import Dims
from harness.heads.pool.query import QueryPool


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    pooler = QueryPool(dims.embed_dim, dims.skip(opts), num_heads=opts["num_heads"], num_queries=1, depth=1,
                       mlp_ratio=4.0, out_proj=True)
    return pooler, dims.embed_dim
