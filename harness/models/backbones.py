"""Frozen backbones: a registry entry built as a timm model, loaded exactly from its family's released layout.

Each family is one module of harness/models/families declaring its timm arguments (the models are built with
`pretrained=False`), its converter, a pure state_dict -> state_dict function that says which sub-network it takes,
and its prefix tokens; loads are strict. The `Backbone` wrapper runs the blocks once per batch through timm's public
`forward_intermediates` and returns every tap asked for from that one pass: any block's output, with or without
the final LayerNorm (`harness.tokens.layers` names them; "norm" and "prenorm" are the last block's).

References: MAE https://github.com/facebookresearch/mae, SimMIM https://github.com/microsoft/SimMIM,
DINO https://github.com/facebookresearch/dino, iBOT https://github.com/bytedance/ibot,
I-JEPA https://github.com/facebookresearch/ijepa, DINOv2 https://github.com/facebookresearch/dinov2,
DINOv3 https://github.com/facebookresearch/dinov3, MoCo v3 https://github.com/facebookresearch/moco-v3.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from harness.errors import HarnessError
from harness.registry import ARCH_OVERRIDE_KEYS, BackboneEntry, load_registry
from harness.tokens.layers import parse_tap
from harness.models.families import families
from harness.plugins import resolve
from harness.models.weights import load_checkpoint, resolve_weights

__all__ = ["Backbone", "load_backbone", "build_model", "convert_checkpoint", "random_init_seed"]


def random_init_seed(entry: BackboneEntry) -> int:
    """Every process builds the identical random-init network for an entry, and entries of the same
    architecture (the demo's MAE, DINO and iBOT variants) still differ from each other."""
    return zlib.crc32(entry.name.encode())
RANDOM_INIT_SHA256 = "random-init"

def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _select(ckpt: Any, entry: BackboneEntry, checkpoint_key: str | None, path: Path) -> Mapping[str, Tensor]:
    """The sub-network to evaluate: an explicit key, else the entry's key, else the family's released layout."""
    if not isinstance(ckpt, Mapping):
        raise HarnessError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dictionary; accepted: a "
                           f"{entry.family} checkpoint for backbone {entry.name!r}.")
    if checkpoint_key is not None:
        candidates: tuple[str | None, ...] = (checkpoint_key,)
    else:
        candidates = (entry.checkpoint_key,) + families()[entry.family].released_layout
    family = families()[entry.family]
    for key in candidates:
        if key is None and _is_state_dict(ckpt):
            return ckpt
        if key is not None and _is_state_dict(ckpt.get(key)):
            return ckpt[key]
        if family.subnetwork is not None and _is_state_dict(inner := family.subnetwork(ckpt, key)):
            return inner
    wanted = " or ".join(dict.fromkeys("the top level" if k is None else f"key {k!r}" for k in candidates))
    inner_names = f" (or one of its sub-networks: {', '.join(family.subnetworks)})" if family.subnetworks else ""
    raise HarnessError(f"{path}: found no state dict at {wanted} (for backbone {entry.name!r}, family "
                       f"{entry.family}); keys present: {_listing(ckpt)}. Set checkpoint_key in the entry (or in an "
                       f"entry with extends = {entry.name!r}) to one of them{inner_names}, or check that the file "
                       "belongs to this family.")


def convert_checkpoint(ckpt: Any, entry: BackboneEntry, checkpoint_key: str | None = None,
                       path: Path = Path("<checkpoint>")) -> dict[str, Tensor]:
    """The timm state dict of the sub-network to evaluate in a loaded checkpoint of `entry`'s family."""
    sd = _select(ckpt, entry, checkpoint_key, path)
    try:
        return families()[entry.family].convert(sd)
    except ValueError as e:
        raise _misfit(entry, path, e) from None


def fit_to_model(sd: Mapping[str, Tensor], model: nn.Module, entry: BackboneEntry,
                 path: Path = Path("<checkpoint>")) -> dict[str, Tensor]:
    """The converted state dict fitted to the built model (its grid, its rebuilt buffers), where the family needs it."""
    fit = families()[entry.family].fit
    try:
        return fit(sd, model) if fit is not None else dict(sd)
    except ValueError as e:
        raise _misfit(entry, path, e) from None


def _misfit(entry: BackboneEntry, path: Path, e: ValueError) -> HarnessError:
    return HarnessError(f"{path}: does not fit backbone {entry.name!r} ({entry.family}, {entry.arch}): {e}; "
                        f"accepted: a {entry.family} release file of this layout.")


def _listing(keys: Any, limit: int = 8) -> str:
    keys = sorted(map(str, keys))
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "") if keys else "none"


def _load_strict(model: nn.Module, sd: Mapping[str, Tensor], entry: BackboneEntry, path: Path) -> None:
    """Load every tensor or explain the key and shape differences; a partial model is never returned."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise HarnessError(
            f"{path}: does not fit backbone {entry.name!r} ({entry.family}, {entry.arch}); is it a checkpoint of "
            f"another family or size? missing keys: {_listing(missing, 5)}; unexpected keys: {_listing(unexpected, 5)}"
            f"; shape mismatches (file vs model): {_listing(shapes, 3)}.")
    model.load_state_dict(sd, strict=True)


# -------------------------------------------------------------------------------------------------- models


def build_model(entry: BackboneEntry, pretrained_file: Path | None = None, **arch_overrides: Any) -> nn.Module:
    """The entry's timm architecture with its and the caller's overrides, seeded so random init is reproducible;
    with `pretrained_file`, timm loads that file itself (its own checkpoint filter: the `timm` family)."""
    bad = sorted(set(arch_overrides) - set(ARCH_OVERRIDE_KEYS))
    if bad:
        raise HarnessError(f"architecture override {bad[0]!r} for backbone {entry.name!r} is not accepted; "
                           f"accepted: {', '.join(ARCH_OVERRIDE_KEYS)}.")
    kwargs = {"img_size": entry.img_size, **families()[entry.family].arch_kwargs, **entry.arch_overrides,
              **arch_overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_init_seed(entry))
        try:
            if pretrained_file is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
            return timm.create_model(entry.arch, pretrained=pretrained_file is not None, num_classes=0, **kwargs)
        except RuntimeError as e:
            if pretrained_file is not None and "Unknown model" not in str(e):
                raise HarnessError(f"{pretrained_file}: timm could not load it into {entry.arch} for backbone "
                                   f"{entry.name!r} ({str(e).strip().splitlines()[0]}); accepted: a state dict of "
                                   "this timm model, as timm saves it or its hub holds it.") from None
            if "Unknown model" not in str(e):
                raise
            raise HarnessError(f"{entry.defined_in}: backbone {entry.name!r} names arch {entry.arch!r}, which timm "
                               f"{timm.__version__} does not know; accepted: a timm model name.") from None


class Backbone(nn.Module):
    """A frozen ViT that returns tokens: its prefix tokens ([cls], then registers or storage tokens where the
    family has them) first, then the patches, after or before the final norm."""

    def __init__(self, model: nn.Module, entry: BackboneEntry, weights_sha256: str):
        super().__init__()
        self.model, self.entry, self.weights_sha256 = model, entry, weights_sha256
        self.embed_dim: int = model.embed_dim
        self.depth: int = len(model.blocks)
        self.num_heads: int = model.blocks[0].attn.num_heads
        self.num_prefix_tokens: int = entry.num_prefix_tokens
        if model.num_prefix_tokens != self.num_prefix_tokens:
            raise HarnessError(f"backbone {entry.name!r}: family {entry.family} declares {self.num_prefix_tokens} "
                               f"prefix tokens but timm's {entry.arch} has {model.num_prefix_tokens}; accepted: an "
                               "arch and family whose prefix tokens ([cls], registers) agree.")
        self.num_registers: int = self.num_prefix_tokens - int(entry.class_token)  # the prefix tokens after [cls]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Stays in eval mode: the backbone is frozen, dropout and the like never switch on."""
        return super().train(False)

    def forward_taps(self, images: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Tokens at each tap (a block's output, or it through the final LayerNorm), prefix tokens first, all from
        one pass that stops at the deepest block asked for."""
        wanted = {t: parse_tap(t, self.depth) for t in taps}
        blocks = sorted({b for b, _ in wanted.values()})
        outs = self.model.forward_intermediates(images, indices=blocks, output_fmt="NLC", intermediates_only=True,
                                                return_prefix_tokens=True, stop_early=True)
        tokens = {b: torch.cat(out[::-1], dim=1) if self.num_prefix_tokens else out for b, out in zip(blocks, outs)}
        return {t: self.model.norm(tokens[b]) if normed else tokens[b] for t, (b, normed) in wanted.items()}

    def forward_tokens(self, images: Tensor, norm: bool = True) -> Tensor:
        """All last-layer tokens (B, T, D)."""
        return self.forward_taps(images, ("norm" if norm else "prenorm",))["norm" if norm else "prenorm"]

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_tokens(images)


def load_backbone(name: BackboneEntry | str, weights: str | Path | None = None, *, checkpoint_key: str | None = None,
                  device: str | torch.device = "cpu", expected_sha256: str | None = None,
                  **arch_overrides: Any) -> Backbone:
    """The backbone `name` (a registry entry, or its name in the registry), frozen on `device`.

    `weights` overrides where the file comes from; `checkpoint_key` picks another sub-network of it (e.g. a
    student); `expected_sha256` is the content `weights` must still have (what the plan hashed);
    `arch_overrides` change the architecture (e.g. tiny test sizes). `random_init` entries read no file.
    """
    entry = load_registry().backbone(name) if isinstance(name, str) else name
    if entry.random_init:
        if weights is not None or checkpoint_key is not None:
            raise HarnessError(f"backbone {entry.name!r} is a random-init demo variant and reads no weights; pass "
                               "weights only to an entry with released weights.")
        return Backbone(build_model(entry, **arch_overrides), entry, RANDOM_INIT_SHA256).to(device)
    loader = families()[entry.family].loader
    if loader is not None:
        model, sha256 = resolve(loader)(entry, weights, checkpoint_key, expected_sha256, **arch_overrides)
        return Backbone(model, entry, sha256).to(device)
    path, sha256 = resolve_weights(entry, weights, expected_sha256)  # file problems surface before a model is built
    sd = convert_checkpoint(load_checkpoint(path), entry, checkpoint_key, path)
    model = build_model(entry, **arch_overrides)
    _load_strict(model, fit_to_model(sd, model, entry, path), entry, path)
    return Backbone(model, entry, sha256).to(device)
