"""`dolg`: DOLG's spatial attention as a pooling (billpsomas/efficient-probing poolings/dolg/dolg.py
`SpatialAttention2d`, factory: s3_dim = width, no ASPP). h = BN2d(conv1(X)) (1x1 conv with bias; BatchNorm eps
1e-5, momentum 0.1, affine); f = h / max(||h||_2 over channels, 1e-12); s = softplus(conv2(ReLU(h))) (1x1 conv to
one channel); pooled = mean over positions of s * f. The tokens must form a square grid of patch tokens (the
official forward views them as one; `dolg_all` fails there); 1x1 convolutions and a mean make the layout moot.

Stacked: every operation is per token and per head (no folding: normalise, ReLU and softplus follow conv1); the
BatchNorm runs per head with each head's running statistics. pycls init: conv weights ~ N(0, 2 / fan_out)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import Params, StackedPool, grid_side, shared_linear



class DolgPool(StackedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, 1, 1)
        for conv in (self.conv1, self.conv2):  # poolings/dolg/net.py init_weights
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / conv.out_channels))

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), softplus scores (N, B, 1, H, W) as the official `return_attn`)."""
        x = tokens[:, self.skip:]
        b, t, d = x.shape
        side = grid_side(t, "dolg")
        h = shared_linear(x, p["conv1.weight"].flatten(2), p["conv1.bias"])  # (N, B, T, D)
        h = torch.stack([F.batch_norm(hn.reshape(-1, d), p["bn.running_mean"][i], p["bn.running_var"][i],
                                      p["bn.weight"][i], p["bn.bias"][i], self.training, self.bn.momentum,
                                      self.bn.eps).view(b, t, d) for i, hn in enumerate(h)])
        w, c = p["conv2.weight"].flatten(1), p["conv2.bias"]  # (N, D), (N, 1)
        scores = torch.stack([F.softplus(F.relu(hn) @ wn + cn) for hn, wn, cn in zip(h, w, c)])  # (N, B, T)
        pooled = torch.stack([(s[..., None] * F.normalize(hn, dim=-1)).mean(1) for s, hn in zip(scores, h)])
        return pooled, scores.view(-1, b, 1, side, side)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return DolgPool(dims.embed_dim, dims.num_prefix_tokens), dims.embed_dim
