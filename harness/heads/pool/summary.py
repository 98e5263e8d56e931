"""The parameter-free poolings of the `cls` and `mean` kinds (trained in the bank's linear groups)."""

from __future__ import annotations

import torch
from torch import nn

from harness.heads.kinds import Dims


class ClsPool(nn.Module):
    """The first prefix token ([cls])."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class MeanPool(nn.Module):
    """Mean of the patch tokens (prefix tokens excluded)."""

    def __init__(self, skip: int):
        super().__init__()
        self.skip = skip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.skip:].mean(dim=1)


def build_cls(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return ClsPool(), dims.embed_dim


def build_mean(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return MeanPool(dims.num_prefix_tokens), dims.embed_dim
