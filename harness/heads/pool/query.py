"""Learned-query cross-attention pooling, the `query` kind (V-JEPA's AttentivePooler)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (Params, add_each, row_blocks, StackedPool, each_linear, layer_norm, mlp, mlp_module, pool_shared,
                                        rows_shared)


class QueryBlock(nn.Module):
    """Parameters of a pre-norm transformer block over the queries, named as timm's and V-JEPA's `Block`."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.ModuleDict(dict(qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim)))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp_module(dim, int(dim * mlp_ratio))


def _query_block(p: Params, prefix: str, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A QueryBlock of every head on its own queries x (N, B, Q, D)."""
    n, b, q, d = x.shape
    qkv = each_linear(layer_norm(x, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"], 1e-5),
                      p[prefix + "attn.qkv.weight"], p[prefix + "attn.qkv.bias"])
    attended = F.scaled_dot_product_attention(*qkv.view(n, b, q, 3, num_heads, -1).permute(3, 0, 1, 4, 2, 5))
    x = x + each_linear(attended.transpose(2, 3).reshape(n, b, q, d), p[prefix + "attn.proj.weight"],
                        p[prefix + "attn.proj.bias"])
    return x + mlp(p, prefix + "mlp.", layer_norm(x, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"], 1e-5))


class QueryPool(StackedPool):
    """V-JEPA's AttentivePooler (facebookresearch/jepa): learned queries, one cross-attention block with MLP.

    As the official forward does: LayerNorm (eps 1e-5) on the tokens only, no output projection after the
    cross-attention (the official `xattn.proj` is never applied, so it is not a parameter here), residual to the
    queries, then `q + MLP(LayerNorm(q))`, then `depth - 1` self-attention blocks over the queries (the official
    init raises for depth > 1, `enumerate(1, blocks)`; this follows its evident intent).
    Pooled features are the queries' outputs concatenated: (B, num_queries * D).

    Efficiency: the tokens are normalised once for every head; each head's LayerNorm gain and key map are folded
    into its query (g * W_k^T q, a D-vector per attention head; the LayerNorm shift and the key bias move every
    score equally and cancel in the softmax), and its gain, shift and value map are applied after pooling (the
    weights sum to 1, so A (x W^T + b) = (A x) W^T + b). Per token the cost is O(heads * queries * D) instead of the
    2 D^2 of a key/value projection.
    """

    def __init__(self, dim: int, skip: int, *, num_heads: int, num_queries: int, depth: int, mlp_ratio: float,
                 out_proj: bool = False):
        super().__init__()
        if dim % num_heads:
            raise HarnessError(f"query option num_heads={num_heads} does not divide the embedding width {dim}; "
                               "accepted: a divisor of the width.")
        self.skip, self.num_heads = skip, num_heads
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        if out_proj:  # efficient probing's copy (jepa @ 787b04a) applies xattn.proj; the later upstream code does not
            self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp_module(dim, int(dim * mlp_ratio))
        self.blocks = nn.ModuleList(QueryBlock(dim, mlp_ratio) for _ in range(depth - 1))
        self._init_official()

    def _init_official(self) -> None:
        """The official init: trunc_normal(0.02) queries and Linear weights, zero biases, fc2 rescaled by 1/sqrt(2)."""
        nn.init.trunc_normal_(self.query_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.mlp.fc2.weight.div_(math.sqrt(2.0))
            for i, blk in enumerate(self.blocks, start=2):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        normed = F.layer_norm(x, x.shape[-1:], eps=1e-5)  # each head's gain and shift are folded in below
        gain, shift = p["norm1.weight"][:, None, None], p["norm1.bias"][:, None, None]
        queries = p["query_tokens"][:, 0]
        n, n_q, dim = queries.shape
        h, hd = self.num_heads, dim // self.num_heads
        w_k, w_v = (w.view(n, h, hd, dim) for w in row_blocks(p["kv.weight"], 2))
        q = each_linear(queries, p["q.weight"], p["q.bias"]).view(n, n_q, h, hd) * hd ** -0.5
        q_in_token_space = torch.einsum("nqhc,nhcd->nqhd", q, w_k).reshape(n, n_q * h, dim) * gain[:, 0]
        attn = rows_shared(q_in_token_space, normed).softmax(dim=-1)  # (N, B, Q*H, T)
        pooled = (pool_shared(attn, normed) * gain + shift).view(n, -1, n_q, h, dim)
        y = torch.einsum("nbqhd,nhcd->nbqhc", pooled, w_v) + p["kv.bias"][:, dim:].view(n, 1, 1, h, hd)
        y = y.reshape(n, -1, n_q, dim)
        if "proj.weight" in p:
            y = each_linear(y, p["proj.weight"], p["proj.bias"])
        out = add_each(y, queries)
        out = out + mlp(p, "mlp.", layer_norm(out, p["norm2.weight"], p["norm2.bias"], 1e-5))
        for i in range(len(self.blocks)):
            out = _query_block(p, f"blocks.{i}.", out, h)
        return out.flatten(2)


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    pooler = QueryPool(dims.embed_dim, dims.skip(opts), num_heads=opts["num_heads"] or dims.num_heads,
                       num_queries=opts["num_queries"], depth=opts["depth"], mlp_ratio=opts["mlp_ratio"])
    return pooler, dims.embed_dim * opts["num_queries"]
