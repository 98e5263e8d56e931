"""`cbam`: CBAM as a pooling (billpsomas/efficient-probing poolings/cbam.py `CbamPooling`, factory: reduction 1/16,
7x7 spatial kernel). The patch tokens are laid out as a (D, H, W) map in row-major order; a channel gate
sigmoid(m(mean_hw X) + m(max_hw X)) with m = fc2(ReLU(fc1)) (1x1 convolutions without bias), then a spatial gate
sigmoid(BN(conv7x7([mean_c ; max_c]))) with an inner BatchNorm2d (eps 1e-5, affine); Y = ReLU(gated + X);
pooled = mean_hw Y. The map must be square and of patch tokens only: `cbam_all` fails officially.

Stacked: the gates are per head and non-linear, so each head gates the shared map itself; the spatial convolution
and BatchNorm run per head (each head's own running statistics)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.heads.kinds import Dims
from harness.heads.pool.kernels import Params, StackedPool, each_linear, grid_side, mlp, shared_linear


KERNEL, RATIO = 7, 1 / 16


class CbamPool(StackedPool):
    def __init__(self, dim: int, skip: int):
        super().__init__()
        reduced = max(1, int(dim * RATIO + 0.5))  # timm make_divisible(v, divisor 1, round_limit 0)
        self.skip = skip
        self.channel = nn.ModuleDict(dict(fc1=nn.Conv2d(dim, reduced, 1, bias=False),
                                          fc2=nn.Conv2d(reduced, dim, 1, bias=False)))
        self.spatial = nn.ModuleDict(dict(conv=nn.ModuleDict(dict(
            conv=nn.Conv2d(2, 1, KERNEL, padding=KERNEL // 2, bias=False), bn=nn.BatchNorm2d(1)))))

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        b, t, d = x.shape
        side = grid_side(t, "cbam")
        grid = x.transpose(1, 2).reshape(b, d, side, side)  # X[b, c, i, j] = x[b, i * side + j, c]
        w1, w2 = p["channel.fc1.weight"].flatten(2), p["channel.fc2.weight"].flatten(2)

        def mlp(v: torch.Tensor) -> torch.Tensor:
            return each_linear(F.relu(shared_linear(v, w1, None)), w2, None)

        gated = grid * torch.sigmoid(mlp(x.mean(1)) + mlp(x.amax(1)))[..., None, None]  # (N, B, D, H, W)
        maps = torch.cat([gated.mean(2, keepdim=True), gated.amax(2, keepdim=True)], dim=2)
        bn, pre = self.spatial.conv.bn, "spatial.conv."
        spatial = torch.stack([F.batch_norm(
            F.conv2d(m, p[pre + "conv.weight"][i], padding=KERNEL // 2), p[pre + "bn.running_mean"][i],
            p[pre + "bn.running_var"][i], p[pre + "bn.weight"][i], p[pre + "bn.bias"][i], self.training,
            bn.momentum, bn.eps) for i, m in enumerate(maps)])
        return F.relu(gated * torch.sigmoid(spatial) + grid).mean((3, 4))


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return CbamPool(dims.embed_dim, dims.num_prefix_tokens), dims.embed_dim
