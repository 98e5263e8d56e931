"""`coca`: CoCa's attention pooler (billpsomas/efficient-probing poolings/coca_pytorch.py `CrossAttention`, factory:
196 queries, 8 heads of 64, one key/value head shared by all query heads). The queries are LayerNorm'd (gain
`norm.gamma`, a constant zero shift `norm.beta`, eps 1e-5), the tokens are not; only query 0 is returned
(queries are independent, so the other 195 are not computed; they stay parameters: LARS scales a tensor's step by
its norm, so they are part of the official update of query 0). Output = to_out(concat_h A_h v), no biases.

Stacked: each head's query heads are folded through the shared key map into token space, and the value map is
applied to each pooled vector."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import Params, StackedPool, each_linear, pool_shared, row_blocks, rows_shared


HEADS, HEAD_DIM = 8, 64


class _ShiftlessLayerNorm(nn.Module):
    """coca-pytorch's LayerNorm: a trained gain, a zero shift kept as a buffer."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))


class CocaPool(StackedPool):
    def __init__(self, dim: int, skip: int, *, num_queries: int):
        super().__init__()
        self.skip = skip
        self.norm = _ShiftlessLayerNorm(dim)
        self.img_queries = nn.Parameter(torch.randn(num_queries, dim))
        self.to_q = nn.Linear(dim, HEADS * HEAD_DIM, bias=False)
        self.to_kv = nn.Linear(dim, 2 * HEAD_DIM, bias=False)
        self.to_out = nn.Linear(HEADS * HEAD_DIM, dim, bias=False)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        first = p["img_queries"][:, :1]  # (N, 1, D)
        normed = F.layer_norm(first, first.shape[-1:], eps=1e-5) * p["norm.gamma"][:, None] + p["norm.beta"][:, None]
        n = first.shape[0]
        q = each_linear(normed, p["to_q.weight"], None).view(n, HEADS, HEAD_DIM) * HEAD_DIM ** -0.5
        w_k, w_v = row_blocks(p["to_kv.weight"], 2)  # (N, 64, D) each
        attn = rows_shared(torch.bmm(q, w_k), x).softmax(-1)  # (N, B, H, T)
        pooled = pool_shared(attn, x)  # (N, B, H, D)
        b = pooled.shape[1]
        values = torch.bmm(pooled.reshape(n, b * HEADS, -1), w_v.transpose(1, 2)).view(n, b, -1)
        return each_linear(values, p["to_out.weight"], None)


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return CocaPool(dims.embed_dim, dims.skip(opts), num_queries=opts["num_queries"]), dims.embed_dim
