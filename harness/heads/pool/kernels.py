"""The stacked kernels attention poolings are written with: N heads' parameters applied to shared tokens at once.

`StackedPool.stacked(params, tokens)` pools the same tokens with N heads' parameter sets at once, each parameter
given with a leading head axis (N, ...) under its module name; `forward` is a stack of one. Each head's products are
matrices of their own, of the same shapes whatever the stack's size, so a head computes the same numbers alone or
stacked; the shared tokens are never copied per head (a broadcast batch operand), and maps that commute with the
attention-weighted sum are applied after it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

Params = dict[str, torch.Tensor]


def each_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head linear map of per-head inputs: x (N, ..., in), w (N, out, in), b (N, out) -> (N, ..., out)."""
    n, out, d = w.shape
    y = torch.bmm(x.reshape(n, -1, d), w.transpose(1, 2)).view(*x.shape[:-1], out)
    return y if b is None else y + b.view(n, *[1] * (x.dim() - 2), out)


def shared_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head linear map of inputs every head shares: x (..., in) -> (N, ..., out)."""
    n, out, d = w.shape
    y = torch.bmm(x.reshape(1, -1, d).expand(n, -1, -1), w.transpose(1, 2)).view(n, *x.shape[:-1], out)
    return y if b is None else y + b.view(n, *[1] * (x.dim() - 1), out)


def rows_shared(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each head's row vectors against shared tokens: q (N, R, D), x (B, T, D) -> scores (N, B, R, T)."""
    n, r, d = q.shape
    scores = torch.bmm(q, x.reshape(-1, d).T.unsqueeze(0).expand(n, -1, -1))  # (N, R, B*T)
    return scores.view(n, r, x.shape[0], -1).transpose(1, 2)


def pool_shared(attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sums of shared tokens: attn (N, B, R, T), x (B, T, D) -> (N, B, R, D)."""
    return torch.stack([torch.bmm(a, x) for a in attn])


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of per-head inputs x (N, ..., D) with each head's affine w, b (N, D)."""
    shape = (w.shape[0], *[1] * (x.dim() - 2), w.shape[1])
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape) + b.view(shape)


def mlp(p: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    hidden = F.gelu(each_linear(x, p[prefix + "fc1.weight"], p[prefix + "fc1.bias"]))
    return each_linear(hidden, p[prefix + "fc2.weight"], p[prefix + "fc2.bias"])


def mlp_module(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))


class StackedPool(nn.Module):
    """A pooling with parameters of its own; subclasses define `stacked`."""

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, B, D') of N heads' parameters `p` on the same tokens (B, T, D)."""
        raise NotImplementedError

    def own_stack(self) -> Params:
        """This module's own parameters as a stack of one head."""
        return {k: v.unsqueeze(0) for k, v in self.named_parameters()}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked(self.own_stack(), tokens)[0]

