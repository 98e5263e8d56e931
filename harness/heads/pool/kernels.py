"""The stacked kernels attention poolings are written with: N heads' parameters applied to shared tokens at once.

`StackedPool.stacked(params, tokens)` pools the same tokens with N heads' parameter sets at once, each parameter
given with a leading head axis (N, ...) under its module name; `forward` is a stack of one. Each head's products are
matrices of their own, of the same shapes whatever the stack's size, so a head computes the same numbers alone or
stacked; the shared tokens are never copied per head (a broadcast batch operand), and maps that commute with the
attention-weighted sum are applied after it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError

Params = dict[str, torch.Tensor]


def add_each(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (N, ...) + b (N, ...) broadcast within each head, head by head: b's gradient then sums over the broadcast
    axes of each head's own slice (a broadcast over the whole stack may sum in another order for another stack
    size, so a head would not compute the same alone and stacked)."""
    return torch.stack([xi + bi for xi, bi in zip(x, b)])


def scale_each(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, ..., D) * w (N, D) (+ b (N, D)), head by head, for the same reason as `add_each`."""
    return torch.stack([xi * wi if b is None else torch.addcmul(b[i], xi, wi) for i, (xi, wi) in enumerate(zip(x, w))])


def each_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head linear map of per-head inputs: x (N, ..., in), w (N, out, in), b (N, out) -> (N, ..., out)."""
    n, out, d = w.shape
    y = torch.bmm(x.reshape(n, -1, d), w.transpose(1, 2)).view(*x.shape[:-1], out)
    return y if b is None else add_each(y, b)


def shared_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head linear map of inputs every head shares: x (..., in) -> (N, ..., out)."""
    n, out, d = w.shape
    y = torch.bmm(x.reshape(1, -1, d).expand(n, -1, -1), w.transpose(1, 2)).view(n, *x.shape[:-1], out)
    return y if b is None else add_each(y, b)


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
    return scale_each(F.layer_norm(x, x.shape[-1:], eps=eps), w, b)


def mlp(p: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    hidden = F.gelu(each_linear(x, p[prefix + "fc1.weight"], p[prefix + "fc1.bias"]))
    return each_linear(hidden, p[prefix + "fc2.weight"], p[prefix + "fc2.bias"])


def mlp_module(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))




def row_blocks(w: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    """A stacked weight (N, parts * out, in) split into its row blocks, each made contiguous: a strided operand can
    take another matmul kernel for another stack size, and with it other roundings."""
    return tuple(b.contiguous() for b in w.unflatten(1, (parts, -1)).unbind(1))


def stat_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A pooling's running statistics (an inner BatchNorm's mean and variance, a constant LayerNorm shift), named as
    in its state_dict; a BatchNorm's step counter is left out (its momentum is fixed)."""
    return [(k, v) for k, v in module.named_buffers() if not k.endswith("num_batches_tracked")]


class StackedPool(nn.Module):
    """A pooling with parameters of its own; subclasses define `stacked`, and read the module's `training` flag
    where they hold a BatchNorm (the stack's running statistics come in `p` with the parameters)."""

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, B, D') of N heads' parameters `p` on the same tokens (B, T, D)."""
        raise NotImplementedError

    def own_stack(self) -> Params:
        """This module's own parameters and running statistics as a stack of one head (views: a train-mode pass
        updates the module's own statistics)."""
        return {k: v.unsqueeze(0) for k, v in (*self.named_parameters(), *stat_buffers(self))}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked(self.own_stack(), tokens)[0]

    def forward_with_attn(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One head: (pooled, attention weights in the official module's layout), for poolings that expose them
        through `stacked_with_attn`."""
        pooled, attn = self.stacked_with_attn(self.own_stack(), tokens)
        return pooled[0], attn[0]

def rows_per_image(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each head's per-image row vectors against that image's tokens: u (N, B, R, D), x (B, T, D) -> (N, B, R, T)."""
    xt = x.transpose(1, 2)
    return torch.stack([torch.bmm(un, xt) for un in u])


class HeadedPool(StackedPool):
    """A pooling whose attention splits the width into `heads` heads: the first `skip` tokens are dropped and
    scores scaled by 1/sqrt(head width); a width the heads do not divide is a user error naming the kind."""

    def __init__(self, kind: str, dim: int, skip: int, heads: int):
        super().__init__()
        self.skip, self.scale = skip, head_split(kind, dim, heads) ** -0.5


def split_heads(q: torch.Tensor, w: torch.Tensor, heads: int) -> torch.Tensor:
    """Queries folded into token space per attention head: q (N, ..., H*c) and a key map w (N, H*c, D) give
    (N, ..., H, D), so that q_h . (W_h x) = out_h . x for every token x."""
    n, _, d = w.shape
    return torch.einsum("n...hc,nhcd->n...hd", q.unflatten(-1, (heads, -1)), w.view(n, heads, -1, d))


def head_values(pooled: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each attention head's value map on its own pooled input: pooled (N, B, H, D), w (N, H*c, D) -> (N, B, H*c)."""
    n, b, h, d = pooled.shape
    return torch.einsum("nbhd,nhcd->nbhc", pooled, w.view(n, h, -1, d)).reshape(n, b, -1)


def token_stats(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, *, training: bool, momentum: float,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm over the channels of every token, as (shift (N, D), scale (N, D)) of each head: batch statistics
    over all B*T tokens in training (the same for every head; each head's running `mean`/`var` (N, D) move towards
    them in place, as torch's BatchNorm does), the running statistics otherwise."""
    if not training:
        return mean, (var + eps).sqrt()
    flat = x.reshape(-1, x.shape[-1])
    batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
    with torch.no_grad():
        count = flat.shape[0]
        mean.mul_(1 - momentum).add_(batch_mean, alpha=momentum)
        var.mul_(1 - momentum).add_(batch_var * (count / max(count - 1, 1)), alpha=momentum)
    n = mean.shape[0]
    return batch_mean.expand(n, -1), (batch_var + eps).sqrt().expand(n, -1)


def grid_side(num_tokens: int, kind: str) -> int:
    """The side of the square patch grid the spatial poolings (cbam, dolg) lay the tokens out on."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise HarnessError(f"aggregator kind {kind!r} lays the patch tokens out on a square grid; got {num_tokens} "
                           "tokens; accepted: a backbone with a square patch grid, patch tokens only ([cls] dropped).")
    return side


def head_split(kind: str, dim: int, heads: int) -> int:
    """The width of each of a pooling's `heads` attention heads; a width they do not divide is a user error."""
    if dim % heads:
        raise HarnessError(f"aggregator kind {kind!r} splits the width into {heads} heads; the width {dim} is not "
                           f"divisible by {heads}; accepted: a width divisible by {heads}.")
    return dim // heads


def plain_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, shared by every head (each head's gain and shift are applied after pooling)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)
