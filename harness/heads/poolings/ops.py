"""Stacked kernels the efficient-probing poolings share (see `harness.heads.aggregators` for the stacking rule:
each head's products are matrices of their own, of the same shapes whatever the stack's size)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from harness.errors import HarnessError


def rows_per_image(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each head's per-image row vectors against that image's tokens: u (N, B, R, D), x (B, T, D) -> (N, B, R, T)."""
    xt = x.transpose(1, 2)
    return torch.stack([torch.bmm(un, xt) for un in u])


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


def square_grid(num_patches: int | None, kind: str) -> str | None:
    """Plan-time check of `grid_side`: None when the patch count is square or unknown, else why not."""
    if num_patches is None or math.isqrt(num_patches) ** 2 == num_patches:
        return None
    return f"aggregator kind {kind!r} needs a square patch grid; this backbone gives {num_patches} patch tokens"


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, shared by every head (each head's gain and shift are applied after pooling)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)
