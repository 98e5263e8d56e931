"""The published probe optimizers as per-head updates of stacked parameters.

A head bank keeps the parameters of equal-shaped heads stacked along a leading head axis `(N, ...)`, so one
update moves every head, each with its own learning rate and weight decay (tensors of shape `(N,)`). Every
operation is either elementwise or reduces within one head's slice, so a head's numbers never depend on which
other heads share its stack; a head whose values turn non-finite contaminates nothing but its own slice.

Presets (checked against the official code):
- `lars`: MAE `util/lars.py` (from MoCo v3), used by MAE `main_linprobe.py` and Beyond [cls]: momentum 0.9,
  trust coefficient 0.001; parameters of one dimension per head (biases) get neither weight decay nor the trust
  ratio. Effective lr = lr * batch / 256 (MAE: `args.lr = args.blr * eff_batch_size / 256`).
- `sgd`: DINOv2 `eval/linear.py`: SGD, momentum 0.9, lr scaled by batch / 256 (`scale_lr`); the grid's wd is
  added to the gradient as in `torch.optim.SGD` (DINOv2 uses 0).
- `adamw`: V-JEPA `evals/*_frozen` (`init_opt`): AdamW, betas (0.9, 0.999), eps 1e-8, the lr as given (not
  scaled by batch), decoupled weight decay.
Which parameters take the decay, the lr and wd schedules, clipping and accumulation are the recipe's
(harness/heads/recipes.py): the caller passes this step's lr and wd tensors and the decay mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.heads import recipes


MOMENTUM = 0.9
LARS_TRUST = 0.001
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def effective_lr(optimizer: str, lr: float, batch_size: int) -> float:
    """The peak lr a head group without a recipe applies: `lr * batch / 256` for lars and sgd, `lr` for adamw."""
    return recipes.effective_lr(recipes.harness_default(optimizer), lr, batch_size)


def _per_head(v: Tensor, p: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against a stacked parameter."""
    return v.view(-1, *([1] * (p.dim() - 1)))


def _head_norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())))


def new_state(optimizer: str, params: list[Tensor]) -> list[dict[str, Tensor]]:
    """Zeroed optimizer state for each stacked parameter."""
    keys = ("m", "v") if optimizer == "adamw" else ("mu",)
    return [{k: torch.zeros_like(p) for k in keys} for p in params]


@torch.no_grad()
def clip_per_head(grads: list[Tensor], max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` over each head's own gradients: scaled by min(1, max_norm / (norm + 1e-6))
    with the L2 norm of the per-tensor norms, so no head's gradients depend on another's."""
    norms = torch.stack([_head_norm(g) for g in grads]).norm(dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp_(max=1.0)
    for g in grads:
        g.mul_(_per_head(scale, g))


@torch.no_grad()
def update(optimizer: str, params: list[Tensor], grads: list[Tensor], state: list[dict[str, Tensor]], *,
           lr: Tensor, wd: Tensor | None, step: int, decayed: list[bool] | None = None) -> None:
    """One in-place step of every head; `lr` and `wd` are (N,), `wd` None when every head's is 0 (skipping it is
    exact: g + 0 * p == g for finite p); `decayed` says which parameters take the decay (default: all; LARS never
    decays 1-D ones); `step` counts from 0. A zero momentum buffer reproduces torch's first-step `buf = d_p`
    exactly, so no first-step branch is needed."""
    for i, (p, g, s) in enumerate(zip(params, grads, state)):
        decay = wd is not None and (decayed is None or decayed[i])
        lr_p, wd_p = _per_head(lr, p), _per_head(wd, p) if decay else None
        if optimizer == "sgd":
            torch.add(g + wd_p * p if decay else g, s["mu"], alpha=MOMENTUM, out=s["mu"])  # one pass
            p.addcmul_(s["mu"], lr_p, value=-1.0)
        elif optimizer == "lars":
            d = g
            if p.dim() > 2:  # more than one dimension per head: not a bias
                d = g + wd_p * p if decay else g
                p_norm, d_norm = _head_norm(p), _head_norm(d)
                trust = torch.where((p_norm > 0) & (d_norm > 0), LARS_TRUST * p_norm / d_norm,
                                    torch.ones_like(p_norm))
                d = d * _per_head(trust, p)
            torch.add(d, s["mu"], alpha=MOMENTUM, out=s["mu"])
            p.addcmul_(s["mu"], lr_p, value=-1.0)
        elif optimizer == "adamw":
            b1, b2 = ADAM_BETAS
            t = step + 1
            if decay:
                p.mul_(1.0 - lr_p * wd_p)
            s["m"].lerp_(g, 1.0 - b1)
            s["v"].mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (s["v"].sqrt() / (1.0 - b2 ** t) ** 0.5).add_(ADAM_EPS)
            p.addcdiv_(s["m"] * (lr_p / (1.0 - b1 ** t)), denom, value=-1.0)
        else:
            raise AssertionError(f"unhandled optimizer {optimizer!r}")
