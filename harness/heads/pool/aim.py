"""`aim`: AIM's attentive pooling (billpsomas/efficient-probing poolings/aim.py `AttentionPoolingClassifier`,
factory: `--num_heads` 16, one query, no qkv bias). The tokens first go through an inner BatchNorm1d over their
channels (affine off, eps 1e-6: batch statistics of all B*T tokens in training, running statistics in evaluation);
the learned query is used raw (no query projection); k = W_k xb, v = W_v xb; no output projection.

Stacked: xb = (x - m) / s per head, so W_k^T q / s is each head's query in token space (the shift cancels) and
A xb = (A x - m) / s is pooled from the shared raw tokens; each head keeps its own running statistics."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (Params, StackedPool, head_values, pool_shared, rows_shared, split_heads,
                                        token_stats)



class AimPool(StackedPool):
    def __init__(self, dim: int, skip: int, *, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise HarnessError(f"aim option num_heads={num_heads} does not divide the embedding width {dim}; "
                               "accepted: a divisor of the width.")
        self.skip, self.num_heads, self.scale = skip, num_heads, (dim // num_heads) ** -0.5
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        shift, scale = token_stats(x, p["bn.running_mean"], p["bn.running_var"], training=self.training,
                                   momentum=self.bn.momentum, eps=self.bn.eps)
        u = split_heads(p["cls_token"][:, 0, 0] * self.scale, p["k.weight"], self.num_heads) / scale[:, None]
        attn = rows_shared(u, x).softmax(-1)  # (N, B, H, T)
        normed = (pool_shared(attn, x) - shift[:, None, None]) / scale[:, None, None]
        return head_values(normed, p["v.weight"])


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return AimPool(dims.embed_dim, dims.skip(opts), num_heads=opts["num_heads"]), dims.embed_dim
