"""The parameter-free poolings of the `cls`, `mean`, `cls_mean` and `registers` kinds (trained in the bank's linear
groups) and of the features `knn` reads. All of them read only the prefix tokens and the patch mean, so they give
the same numbers on the token cache's summary layout as on every token."""

from __future__ import annotations

import torch
from torch import nn

from harness.heads.kinds import Dims, NotApplicable


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


class ClsMeanPool(nn.Module):
    """[cls] concatenated with the patch mean of the last `width` channels: DINOv2's `avgpool`, which with several
    blocks is every block's [cls] and the LAST block's patch mean (its create_linear_input)."""

    def __init__(self, skip: int, width: int):
        super().__init__()
        self.skip, self.width = skip, width

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, 0], tokens[:, self.skip:, -self.width:].mean(dim=1)], dim=-1)


class RegisterPool(nn.Module):
    """Mean of the register tokens (CAPI's register readout): prefix tokens `first` to `end`."""

    def __init__(self, first: int, end: int):
        super().__init__()
        self.first, self.end = first, end

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.first:self.end].mean(dim=1)


def build_cls(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return ClsPool(), dims.embed_dim


def build_mean(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return MeanPool(dims.num_prefix_tokens), dims.embed_dim


def build_cls_mean(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    width = dims.block_width or dims.embed_dim
    return ClsMeanPool(dims.num_prefix_tokens, width), dims.embed_dim + width


def build_registers(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    if dims.num_registers == 0:
        raise NotApplicable("this aggregator reads register tokens, and this backbone has none")
    return RegisterPool(dims.num_cls, dims.num_prefix_tokens), dims.embed_dim


_SOURCES = {"cls": build_cls, "mean": build_mean, "cls_mean": build_cls_mean, "registers": build_registers}


def build_source(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    """The pooling of the `source` option (k-NN's features); NotApplicable where the backbone lacks its token."""
    if opts["source"] in ("cls", "cls_mean") and dims.num_cls == 0:
        raise NotApplicable(f"source {opts['source']!r} reads the [cls] token, and this backbone has none")
    return _SOURCES[opts["source"]](dims, opts)
