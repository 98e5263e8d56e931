"""`simpool`: SimPool (billpsomas/efficient-probing poolings/simpool.py `SimPool`, factory: 1 head, no qkv bias,
gamma off). The query is W_q of the mean of the RAW tokens; keys are W_k of the LayerNorm'd tokens (eps 1e-6) and
the values are the LayerNorm'd tokens themselves (no value or output projection).

Stacked: the tokens are normalised once for every head; each head's key map and LayerNorm gain are folded into
its query (W_k^T q * g, the shift moves every score equally) and its gain and shift are applied after pooling."""

from __future__ import annotations

import torch
from torch import nn

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (Params, StackedPool, plain_norm, pool_shared, rows_per_image, scale_each,
                                        shared_linear)



class SimPool(StackedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__()
        self.skip, self.scale = skip, dim ** -0.5
        self.norm_patches = nn.LayerNorm(dim, eps=1e-6)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), attention (N, B, 1, 1, T) as the official `return_attn`)."""
        x = tokens[:, self.skip:]
        normed = plain_norm(x, 1e-6)
        gain, shift = p["norm_patches.weight"], p["norm_patches.bias"]
        q = shared_linear(x.mean(1), p["wq.weight"], None)  # (N, B, D)
        u = scale_each(torch.bmm(q, p["wk.weight"]), gain * self.scale)
        attn = rows_per_image(u.unsqueeze(2), normed).softmax(-1)  # (N, B, 1, T)
        pooled = scale_each(pool_shared(attn, normed)[:, :, 0], gain, shift)
        return pooled, attn.unsqueeze(2)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return SimPool(dims.embed_dim, dims.skip(opts)), dims.embed_dim
