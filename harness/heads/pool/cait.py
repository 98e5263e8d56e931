"""`cait`: CaiT class-attention pooling (billpsomas/efficient-probing poolings/other_pool.py `CAPooling`, factory:
4 heads, 1 class-attention block, qkv bias, LayerScale 1e-5). A learned class token c attends over [c ; tokens]
(norm1 on all rows, eps 1e-6; the query from c's row only); c += gamma_1 * proj(concat_h A v);
c += gamma_2 * MLP(norm2(c)); pooled = norm(c) with the final LayerNorm at eps 1e-5. The tokens are not updated.

Stacked: the tokens are normalised once; each head's norm1 gain and key map fold into its query (norm1's shift
and the key bias move every score, the class token's too, equally), its value map is applied after pooling."""

from __future__ import annotations

import torch
from torch import nn

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (HeadedPool, Params, each_linear, head_values, layer_norm, mlp,
                                        mlp_module, plain_norm, pool_shared, rows_shared, split_heads)


HEADS, LAYER_SCALE = 4, 1e-5
BLOCK = "blocks_token_only.0."


class _ClassAttentionBlock(nn.Module):
    """Parameters of CaiT's LayerScale_Block_CA, named as the official module's."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.ModuleDict({k: nn.Linear(dim, dim) for k in ("q", "k", "v", "proj")})
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp_module(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(torch.full((dim,), LAYER_SCALE))
        self.gamma_2 = nn.Parameter(torch.full((dim,), LAYER_SCALE))


class CaitPool(HeadedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__("cait", dim, skip, HEADS)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks_token_only = nn.ModuleList([_ClassAttentionBlock(dim)])
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():  # CaiT's _init_weights
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = plain_norm(tokens[:, self.skip:], 1e-6)
        c = p["cls_token"][:, 0]  # (N, 1, D)
        gain, shift = p[BLOCK + "norm1.weight"], p[BLOCK + "norm1.bias"]
        c_normed = layer_norm(c, gain, shift, 1e-6)
        q = each_linear(c_normed, p[BLOCK + "attn.q.weight"], p[BLOCK + "attn.q.bias"])[:, 0] * self.scale
        u = split_heads(q, p[BLOCK + "attn.k.weight"], HEADS) * gain[:, None]  # (N, H, D)
        self_score = torch.einsum("nhd,nd->nh", u, plain_norm(c[:, 0], 1e-6))
        token_scores = rows_shared(u, x)  # (N, B, H, T)
        attn = torch.cat([self_score[:, None, :, None].expand(-1, x.shape[0], -1, 1), token_scores], -1).softmax(-1)
        to_self, to_tokens = attn[..., :1], attn[..., 1:]
        mixed = to_self * c_normed[:, None] + pool_shared(to_tokens, x) * gain[:, None, None] + \
            to_tokens.sum(-1, keepdim=True) * shift[:, None, None]  # sum_j A_j norm1(u_j), per head (N, B, H, D)
        y = head_values(mixed, p[BLOCK + "attn.v.weight"]) + p[BLOCK + "attn.v.bias"][:, None]
        y = each_linear(y, p[BLOCK + "attn.proj.weight"], p[BLOCK + "attn.proj.bias"])
        c = c + p[BLOCK + "gamma_1"][:, None] * y
        c = c + p[BLOCK + "gamma_2"][:, None] * mlp(
            p, BLOCK + "mlp.", layer_norm(c, p[BLOCK + "norm2.weight"], p[BLOCK + "norm2.bias"], 1e-6))
        return layer_norm(c, p["norm.weight"], p["norm.bias"], 1e-5)


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return CaitPool(dims.embed_dim, dims.skip(opts)), dims.embed_dim
