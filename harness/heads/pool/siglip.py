"""`siglip`: SigLIP's MAP head (billpsomas/efficient-probing poolings/clip/attention_pool.py `AttentionPoolLatent`,
factory: 8 heads, 1 latent, MLP ratio 4, qkv bias, norm_layer None). One learned latent queries the RAW tokens;
y = proj(concat_h A_h V_h); out = y + MLP(y), with NO LayerNorm before the MLP and no residual from the latent.

Stacked: each head's query is folded through its key map into token space (the key bias cancels in the softmax),
and its value map is applied after pooling (the weights sum to 1)."""

from __future__ import annotations

import torch
from torch import nn

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (HeadedPool, Params, each_linear, head_values, mlp, mlp_module,
                                        pool_shared, row_blocks, rows_shared, split_heads)


HEADS = 8


class SiglipPool(HeadedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__("siglip", dim, skip, HEADS)
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = mlp_module(dim, 4 * dim)
        nn.init.trunc_normal_(self.latent, std=dim ** -0.5)  # timm's init_weights (latent_dim ** -0.5)

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), attention (N, B, 8, 1, T) as the official `return_attn`)."""
        x = tokens[:, self.skip:]
        n, d = p["latent"].shape[0], x.shape[-1]
        w_k, w_v = row_blocks(p["kv.weight"], 2)
        u = split_heads(each_linear(p["latent"][:, 0], p["q.weight"], p["q.bias"])[:, 0] * self.scale, w_k, HEADS)
        attn = rows_shared(u, x).softmax(-1)  # (N, B, H, T)
        y = head_values(pool_shared(attn, x), w_v) + p["kv.bias"][:, None, d:]
        y = each_linear(y, p["proj.weight"], p["proj.bias"])
        return y + mlp(p, "mlp.", y), attn.unsqueeze(3)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return SiglipPool(dims.embed_dim, dims.skip(opts)), dims.embed_dim
