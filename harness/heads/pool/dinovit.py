"""`dinovit`: one DINOv2 block, then the token mean (billpsomas/efficient-probing poolings/other_pool.py
`DinoViTBlockPooling`, factory: 8 heads; dinov2 Block: qkv without bias, no LayerScale, LayerNorm eps 1e-5).
A full self-attention block over the given tokens: y = x + proj(MHSA(norm1(x))); z = y + MLP(norm2(y));
pooled = mean_i z_i.

Stacked: self-attention among the tokens cannot be folded, so each head runs its block on the shared tokens
(norm1's affine folded into the qkv map, so the tokens are normalised once); fc2 is applied after the mean."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import (Params, StackedPool, each_linear, head_split, layer_norm, mlp, mlp_module,
                                        plain_norm, shared_linear)


HEADS = 8
BLOCK = "dino_block."


class DinoBlockPool(StackedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__()
        head_split("dinovit", dim, HEADS)
        self.skip = skip
        self.dino_block = nn.ModuleDict(dict(
            norm1=nn.LayerNorm(dim), attn=nn.ModuleDict(dict(qkv=nn.Linear(dim, 3 * dim, bias=False),
                                                             proj=nn.Linear(dim, dim))),
            norm2=nn.LayerNorm(dim), mlp=mlp_module(dim, 4 * dim)))

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        b, t, d = x.shape
        gain, shift, w = p[BLOCK + "norm1.weight"], p[BLOCK + "norm1.bias"], p[BLOCK + "attn.qkv.weight"]
        n = w.shape[0]
        qkv = shared_linear(plain_norm(x, 1e-5), w * gain[:, None], torch.bmm(w, shift.unsqueeze(-1))[..., 0])
        q, k, v = qkv.view(n, b, t, 3, HEADS, -1).permute(3, 0, 1, 4, 2, 5)  # (N, B, H, T, D/H) each
        attended = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(n, b, t, d)
        y = x + each_linear(attended, p[BLOCK + "attn.proj.weight"], p[BLOCK + "attn.proj.bias"])
        hidden = F.gelu(each_linear(layer_norm(y, p[BLOCK + "norm2.weight"], p[BLOCK + "norm2.bias"], 1e-5),
                              p[BLOCK + "mlp.fc1.weight"], p[BLOCK + "mlp.fc1.bias"]))
        mean = torch.stack([yn.mean(1) for yn in y])  # head by head, for the reason of `add_each`
        return mean + each_linear(torch.stack([hn.mean(1) for hn in hidden]), p[BLOCK + "mlp.fc2.weight"],
                                  p[BLOCK + "mlp.fc2.bias"])


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return DinoBlockPool(dims.embed_dim, dims.skip(opts)), dims.embed_dim
