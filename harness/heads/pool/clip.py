"""`clip`: CLIP-style attention pool (billpsomas/efficient-probing poolings/clip/attention_pool2d.py
`AttentionPool2d`, factory: 4 heads, qkv bias, feat_size 14). The tokens are LayerNorm'd (eps 1e-6), their mean is
put in front, a learned position table of feat_size^2 + 1 rows is added, and only the mean token's query is read
out: it attends over all feat_size^2 + 1 positions (itself too); output = proj(concat_h sum_j A_j v_j).

The table fixes the token count: the official forward runs only on exactly feat_size^2 patch tokens and not on
[cls] + patches (so there is no `clip_all`). The plan refuses other counts; `feat_size` sets the table's grid.

Stacked: the shared normalised tokens are pooled with each head's attention; each head's LayerNorm affine, table,
key and value maps are applied to one vector per attention head, since sum_j A_j = 1."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from harness.heads.kinds import Dims
from harness.heads.kinds.clip import why_not
from harness.heads.pool.kernels import (HeadedPool, Params, each_linear, head_values, plain_norm,
                                        pool_shared, row_blocks, rows_per_image, split_heads)


HEADS = 4


class ClipPool(HeadedPool):
    def __init__(self, dim: int, skip: int, *, feat_size: int):
        super().__init__("clip", dim, skip, HEADS)
        self.feat_size = feat_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(feat_size ** 2 + 1, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=dim ** -0.5)
        nn.init.trunc_normal_(self.qkv.weight, std=dim ** -0.5)
        nn.init.zeros_(self.qkv.bias)

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), attention (N, B, 4, T) of the mean token on the patches, as `return_attn`)."""
        x = tokens[:, self.skip:]
        if x.shape[1] != self.feat_size ** 2:
            raise HarnessError(f"{why_not(self.feat_size, x.shape[1])}; accepted: patch tokens of a square grid "
                               "of feat_size^2.")
        normed = plain_norm(x, 1e-6)
        seq = torch.cat([normed.mean(1, keepdim=True), normed], dim=1)  # (B, T+1, D), shared
        gain, shift, pos = p["norm.weight"], p["norm.bias"], p["pos_embed"]
        n, d = gain.shape
        w_q, w_k, w_v = row_blocks(p["qkv.weight"], 3)
        b_q, _, b_v = p["qkv.bias"].view(n, 3, d).unbind(1)
        z0 = seq[:, 0] * gain[:, None] + shift[:, None] + pos[:, None, 0]  # the mean token's input (N, B, D)
        u = split_heads(each_linear(z0, w_q, b_q) * self.scale, w_k, HEADS)  # (N, B, H, D)
        scores = rows_per_image(u * gain[:, None, None], seq) + torch.einsum("nbhd,njd->nbhj", u, pos)
        attn = scores.softmax(-1)  # (N, B, H, T+1); the LayerNorm shift and key bias cancel
        mixed = pool_shared(attn, seq) * gain[:, None, None] + shift[:, None, None] + \
            torch.einsum("nbhj,njd->nbhd", attn, pos)
        y = head_values(mixed, w_v) + b_v[:, None]
        return each_linear(y, p["proj.weight"], p["proj.bias"]), attn[..., 1:]

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return ClipPool(dims.embed_dim, dims.num_prefix_tokens, feat_size=opts["feat_size"]), dims.embed_dim
