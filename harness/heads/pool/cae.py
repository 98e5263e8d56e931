"""`cae`: CAE's attentive block (billpsomas/efficient-probing poolings/cae_att.py `CAEAttentiveBlock`, factory:
8 heads, no qkv bias). One learned query token (official init zeros); three separate LayerNorms (eps 1e-5) for the
query, the keys and the values; q = W_q norm_q(t), k = W_k norm_k(x), v = W_v norm_v(x); output = proj(concat_h
A_h v_h). No residual, no MLP; the official `norm2_cross` is built but never used, so it is not a parameter here.

Stacked: the tokens are normalised once; norm_k's gain and the key map fold into each head's query (the shift
cancels), norm_v's affine and the value map are applied after pooling."""

from __future__ import annotations

import torch
from torch import nn

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (HeadedPool, Params, each_linear, head_values, layer_norm,
                                        plain_norm, pool_shared, rows_shared, split_heads)


HEADS = 8


class CaePool(HeadedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__("cae", dim, skip, HEADS)
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1_q, self.norm1_k, self.norm1_v = (nn.LayerNorm(dim) for _ in range(3))
        self.cross_attn = nn.ModuleDict(dict(q=nn.Linear(dim, dim, bias=False), k=nn.Linear(dim, dim, bias=False),
                                             v=nn.Linear(dim, dim, bias=False), proj=nn.Linear(dim, dim)))

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = plain_norm(tokens[:, self.skip:], 1e-5)
        query = layer_norm(p["query_token"][:, 0], p["norm1_q.weight"], p["norm1_q.bias"], 1e-5)
        q = each_linear(query, p["cross_attn.q.weight"], None)[:, 0] * self.scale
        u = split_heads(q, p["cross_attn.k.weight"], HEADS) * p["norm1_k.weight"][:, None]
        attn = rows_shared(u, x).softmax(-1)  # (N, B, H, T)
        values = pool_shared(attn, x) * p["norm1_v.weight"][:, None, None] + p["norm1_v.bias"][:, None, None]
        return each_linear(head_values(values, p["cross_attn.v.weight"]), p["cross_attn.proj.weight"],
                     p["cross_attn.proj.bias"])


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return CaePool(dims.embed_dim, dims.skip(opts)), dims.embed_dim
