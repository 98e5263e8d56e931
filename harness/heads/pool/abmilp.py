"""Attention-based MIL pooling, the `abmilp` kind (Beyond [cls], gmum/beyond_cls)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.heads.kinds import Dims
from harness.heads.pool.kernels import Params, StackedPool, each_linear, pool_shared, rows_shared, shared_linear


@lru_cache(maxsize=16)
def sincos_pos_embed_2d(dim: int, num_patches: int, num_prefix: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table (1, num_prefix + num_patches, dim), zero rows for the prefix tokens.

    As MAE's util/pos_embed.py: the first half of the channels encodes the column index, the second half the row
    index (row-major token order); each half is [sin | cos].
    """
    side = math.isqrt(num_patches)
    if side * side != num_patches or dim % 4:
        raise HarnessError(f"abmilp option cond='pe' needs a square patch grid and a width divisible by 4; got "
                           f"{num_patches} patch tokens of width {dim}; accepted: cond='none' for this backbone.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat([torch.zeros(num_prefix, dim, dtype=torch.float64), torch.cat(parts, dim=1)])
    return table.float().unsqueeze(0)


# Attention poolings run as stacks: `stacked(params, tokens)` pools the same tokens with N heads' parameter sets at


class SelfAttention(nn.Module):
    """Single-head self-attention without qkv bias (beyond_cls reuses models_vit.Attention(dim, num_heads=1));
    parameters only, run by ABMILPPool."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)


class ABMILPPool(StackedPool):
    """Attention-based MIL pooling (gmum/beyond_cls ABMILPHead): softmax-weighted sum of the tokens.

    Options as in the official code: `depth` Linear layers (with `activation` between) predict one score per token;
    `self_attention` "map" feeds the self-attended tokens to the predictor, "both" also pools them; `cond` "pe" adds
    the fixed 2-D sin-cos table to the predictor input. The first `skip` tokens are dropped (content "patch").
    """

    def __init__(self, dim: int, skip: int, num_prefix_tokens: int, *, depth: int, activation: str,
                 self_attention: str, cond: str):
        super().__init__()
        self.skip, self.cond, self.sa_mode = skip, cond, self_attention
        self.pe_prefix = num_prefix_tokens - skip
        self.self_attn = SelfAttention(dim) if self_attention != "none" else None
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, dim), nn.Tanh() if activation == "tanh" else nn.ReLU()]
        self.attention_predictor = nn.Sequential(*layers, nn.Linear(dim, 1))

    def _scores(self, p: Params, h: torch.Tensor, shared: bool) -> torch.Tensor:
        """(N, B, T) token scores of the predictor on `h`: shared (B, T, D) or per head (N, B, T, D)."""
        n = p["attention_predictor.0.weight"].shape[0]
        *hidden, last = [i for i, m in enumerate(self.attention_predictor) if isinstance(m, nn.Linear)]
        for i in hidden:
            h = (shared_linear if shared else each_linear)(h, p[f"attention_predictor.{i}.weight"],
                                                          p[f"attention_predictor.{i}.bias"])
            h, shared = self.attention_predictor[i + 1](h), False
        w, b = p[f"attention_predictor.{last}.weight"], p[f"attention_predictor.{last}.bias"]  # (N, 1, D), (N, 1)
        if shared:
            scores = rows_shared(w, h)[:, :, 0]
        else:
            scores = torch.bmm(w, h.reshape(n, -1, h.shape[-1]).transpose(1, 2)).view(h.shape[:-1])
        return scores + b.view(n, 1, 1)

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), attention weights (N, B, T) over the pooled tokens)."""
        x = tokens[:, self.skip:]
        attended = None
        if self.self_attn is not None:
            q, k, v = shared_linear(x, p["self_attn.qkv.weight"], None).chunk(3, dim=-1)
            attended = each_linear(F.scaled_dot_product_attention(q, k, v), p["self_attn.proj.weight"],
                                  p["self_attn.proj.bias"])
        per_head_in = self.sa_mode in ("map", "both")
        scores_in = attended if per_head_in else x
        if self.cond == "pe":
            pe = sincos_pos_embed_2d(x.shape[-1], x.shape[1] - self.pe_prefix, self.pe_prefix)
            scores_in = scores_in + pe.to(device=x.device, dtype=x.dtype)
        attn = self._scores(p, scores_in, shared=not per_head_in).softmax(dim=-1)
        if self.sa_mode == "both":
            n, b, t = attn.shape
            pooled = torch.bmm(attn.reshape(n * b, 1, t), attended.reshape(n * b, t, -1)).view(n, b, -1)
        else:
            pooled = pool_shared(attn.unsqueeze(2), x)[:, :, 0]
        return pooled, attn

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]

    def forward_with_attn(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One head: (pooled (B, D), attention weights (B, T, 1)), as the official module returns them."""
        pooled, attn = self.stacked_with_attn(self.own_stack(), tokens)
        return pooled[0], attn[0].unsqueeze(-1)



def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return ABMILPPool(dims.embed_dim, dims.skip(opts), dims.num_prefix_tokens, depth=opts["depth"],
                      activation=opts["activation"], self_attention=opts["self_attention"],
                      cond=opts["cond"]), dims.embed_dim
