"""Readout heads: how a frozen backbone's tokens become class logits.

Every head is `pool -> (BatchNorm1d(affine=False) | nothing) -> Linear`, built by `build_head` from a registry
entry plus grid overrides and its kind's declaration (harness/heads/kinds). All heads take the same input, the
backbone's tokens `(B, T, D)` with its `num_prefix_tokens` prefix tokens first, so a head bank can feed one backbone
pass to every head. Each pooler reproduces its official module (see the fixtures' aggregators folder), but applies
linear maps that commute with the attention-weighted sum after pooling, on one vector per query, not on every token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.heads.kinds import LINEAR_STD, Dims, NotApplicable, kinds, resolve_options
from harness.heads.recipes import Recipe
from harness.registry import AggregatorEntry

BN_EPS = 1e-6  # MAE main_linprobe, beyond_cls and efficient-probing all use BatchNorm1d(affine=False, eps=1e-6)


class Head(nn.Module):
    """pool -> (frozen LayerNorm) -> BatchNorm1d(affine=False, eps 1e-6) or nothing -> Linear; `tap` names the
    tokens it reads. The linear weight is drawn from trunc_normal (MAE) or normal (DINOv2, `normal_init`) with
    `linear_std` and a zero bias, or keeps PyTorch's default init (`linear_std` None). `fc_norm`: MAE's
    --global_pool LayerNorm (eps 1e-6, weight 1, bias 0, never trained)."""

    def __init__(self, pooler: nn.Module, pooled_dim: int, num_classes: int, *, tap: str, batchnorm: bool,
                 linear_std: float | None, normal_init: bool = False, fc_norm: bool = False):
        super().__init__()
        self.tap = tap
        self.pooler = pooler
        self.fc_norm = nn.LayerNorm(pooled_dim, eps=1e-6, elementwise_affine=False) if fc_norm else nn.Identity()
        self.norm = nn.BatchNorm1d(pooled_dim, affine=False, eps=BN_EPS) if batchnorm else nn.Identity()
        self.linear = nn.Linear(pooled_dim, num_classes)
        if linear_std is not None:
            (nn.init.normal_ if normal_init else nn.init.trunc_normal_)(self.linear.weight, std=linear_std)
            nn.init.zeros_(self.linear.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D') before the BatchNorm and the linear layer."""
        return self.fc_norm(self.pooler(tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.pool(tokens)))


def head_dims(embed_dim: int, num_heads: int, num_prefix_tokens: int, *, patch_grid: tuple[int, int] | None = None,
              num_registers: int = 0, num_blocks: int = 1) -> Dims:
    """What a pooler knows of a backbone whose tokens it reads from `num_blocks` blocks, concatenated."""
    return Dims(embed_dim * num_blocks, num_heads, num_prefix_tokens, patch_grid, num_registers, embed_dim)


def build_head(entry: AggregatorEntry, *, embed_dim: int, num_heads: int, num_prefix_tokens: int,
               num_classes: int, options: dict[str, Any] | None = None,
               patch_grid: tuple[int, int] | None = None, recipe: Recipe | None = None, num_registers: int = 0,
               num_blocks: int = 1) -> Head:
    """The head for `entry` on a backbone of that width, heads and prefix tokens (the last `num_registers` of them
    registers), reading `num_blocks` blocks concatenated along the channels; float32.

    `options` (from a grid) override the recipe's option defaults, which override `entry.options`; a recipe's head
    layers, init and tap replace the kind's where it sets them. Raises NotApplicable for a kind that needs a token
    the backbone lacks ([cls], registers).
    """
    kind = kinds()[entry.kind]
    opts = resolve_options(entry, {**(recipe.options_for(entry.kind) if recipe else {}), **(options or {})})
    dims = head_dims(embed_dim, num_heads, num_prefix_tokens, patch_grid=patch_grid, num_registers=num_registers,
                     num_blocks=num_blocks)
    if kind.needs_cls and dims.num_cls == 0:
        raise NotApplicable(f"aggregator {entry.name!r} reads the [cls] token, and this backbone has none")
    try:
        pooler, pooled_dim = kind.build_pooler(dims, opts)
    except NotApplicable as e:
        raise NotApplicable(f"aggregator {entry.name!r}: {e}") from None
    batchnorm = opts.get("batchnorm", kind.batchnorm)
    if recipe is None:
        return Head(pooler, pooled_dim, num_classes, tap=entry.tap, batchnorm=batchnorm,
                    linear_std=kind.linear_std).float()
    init = recipe.linear_init or ("default" if kind.linear_std is None else "trunc_normal")
    return Head(pooler, pooled_dim, num_classes, tap=recipe.tap_for(entry.kind, entry.tap),
                batchnorm=batchnorm if recipe.batchnorm is None else recipe.batchnorm,
                linear_std=None if init == "default" else LINEAR_STD, normal_init=init == "normal",
                fc_norm=recipe.pools_globally(entry.kind)).float()
