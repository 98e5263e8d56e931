"""`esimpool`: SimPool without linear layers (billpsomas/efficient-probing poolings/simpool.py `SimPool_nolinears`,
factory: 12 heads). Query = LayerNorm(mean of the RAW tokens), keys = LayerNorm(tokens) (the same norm, eps 1e-6),
values = the RAW tokens; 12 heads of width/12 channels each, scale (width/12)^-0.5.

The official forward reshapes to (.., 12, width // 12) and raises unless the width is divisible by 12 (ViT-B's
768 is; ViT-L's 1024 and ViT-H's 1280 are not): the plan refuses such a backbone rather than invent a split."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from harness.heads.kinds import Dims
from harness.heads.kinds.esimpool import HEADS, why_not
from harness.heads.pool.kernels import Params, StackedPool, plain_norm


class ESimPool(StackedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__()
        if dim % HEADS:
            raise HarnessError(f"{why_not(dim)}; accepted: a backbone of width divisible by {HEADS} (ViT-S/B).")
        self.skip, self.scale = skip, (dim // HEADS) ** -0.5
        self.norm_patches = nn.LayerNorm(dim, eps=1e-6)

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), attention (N, B, 12, 1, T) as the official `return_attn`)."""
        x = tokens[:, self.skip:]
        b, t, d = x.shape
        gain, shift = p["norm_patches.weight"][:, None], p["norm_patches.bias"][:, None]
        q = (plain_norm(x.mean(1), 1e-6) * gain + shift) * gain * self.scale  # (N, B, D); the key shift cancels
        keys, values = plain_norm(x, 1e-6).view(b, t, HEADS, -1), x.view(b, t, HEADS, -1)
        attn = torch.stack([torch.einsum("bhc,bthc->bht", qn.view(b, HEADS, -1), keys) for qn in q]).softmax(-1)
        pooled = torch.stack([torch.einsum("bht,bthc->bhc", a, values) for a in attn])
        return pooled.reshape(len(q), b, d), attn.unsqueeze(3)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return ESimPool(dims.embed_dim, dims.skip(opts)), dims.embed_dim
