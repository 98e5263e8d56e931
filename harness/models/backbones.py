"""Frozen backbones: a registry entry built as a timm model, loaded exactly from its family's released layout.

Families map onto two timm classes built with `pretrained=False`: `VisionTransformer` (MAE, DINO, iBOT, I-JEPA;
I-JEPA without a [cls] token) and `Beit` (SimMIM: shared relative position bias, layer scale, q/v biases, no
absolute position embedding). Each family has one converter, a pure state_dict -> state_dict function that says
which sub-network it takes; loads are strict. The `Backbone` wrapper runs the blocks once and exposes both the
last block's output ("prenorm") and the final LayerNorm applied to it ("norm"), which is what the head bank reads.

References: MAE https://github.com/facebookresearch/mae, SimMIM https://github.com/microsoft/SimMIM,
DINO https://github.com/facebookresearch/dino, iBOT https://github.com/bytedance/ibot,
I-JEPA https://github.com/facebookresearch/ijepa.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.beit import Beit
from torch import Tensor, nn

from harness.errors import HarnessError
from harness.registry import ARCH_OVERRIDE_KEYS, BackboneEntry, TOKEN_TAPS, load_registry
from harness.models.weights import load_checkpoint, resolve_weights

__all__ = ["Backbone", "load_backbone", "build_model", "convert_checkpoint", "CONVERTERS", "random_init_seed"]



def random_init_seed(entry: BackboneEntry) -> int:
    """Every process builds the identical random-init network for an entry, and entries of the same
    architecture (the demo's MAE, DINO and iBOT variants) still differ from each other."""
    return zlib.crc32(entry.name.encode())
RANDOM_INIT_SHA256 = "random-init"

# timm constructor arguments that make the architecture match each family's own code.
_FAMILY_KWARGS: dict[str, dict[str, Any]] = {
    "mae": {},
    "dino": {},
    "ibot": {},
    "ijepa": {"class_token": False, "global_pool": "avg", "fc_norm": False},
    "simmim": {"global_pool": "", "use_abs_pos_emb": False, "use_rel_pos_bias": False,
               "use_shared_rel_pos_bias": True, "init_values": 0.1},
}


# ----------------------------------------------------------------------------------------------- converters


def _strip(sd: Mapping[str, Tensor], prefixes: Sequence[str]) -> dict[str, Tensor]:
    """Remove the first matching prefix from every key (DDP's `module.`, a wrapper's `backbone.`, ...)."""
    out = {}
    for key, value in sd.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def _drop(sd: Mapping[str, Tensor], prefixes: Sequence[str]) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(tuple(prefixes))}


def convert_mae(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MAE `mae_pretrain_vit_*.pth['model']`: the encoder alone, already in timm's key names."""
    return dict(sd)


def convert_simmim(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SimMIM `['model']`: keeps the `encoder.` sub-network; drops the decoder, the mask token (pre-training only)
    and the relative position index (a constant timm rebuilds)."""
    encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    return {k: v for k, v in encoder.items() if k != "mask_token" and not k.endswith("relative_position_index")}


def convert_dino(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DINO teacher (`backbone.*`) or student (`module.backbone.*`) of a full checkpoint, or the released
    backbone-only file (bare keys): the backbone, without the projection head."""
    return _strip(_drop(sd, ("head.", "module.head.")), ("module.backbone.", "backbone."))


def convert_ibot(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """iBOT as DINO; also drops the student's `masked_embed` (the mask token, unused without a mask)."""
    return {k: v for k, v in convert_dino(sd).items() if k != "masked_embed"}


def convert_ijepa(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """I-JEPA `target_encoder` (or `encoder`, the context encoder) with DDP's `module.` removed; no [cls]."""
    return _strip(sd, ("module.",))


CONVERTERS: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "mae": convert_mae, "simmim": convert_simmim, "dino": convert_dino, "ibot": convert_ibot, "ijepa": convert_ijepa,
}
# Where a family's backbone-only release keeps the weights when the sub-network key itself is absent:
# DINO's `*_pretrain.pth` is the bare teacher state dict (None = the whole file), iBOT's extracted files wrap it in
# `state_dict`. These are already the chosen sub-network, so they are used only when no key was asked for.
_RELEASED_LAYOUT: dict[str, tuple[str | None, ...]] = {"dino": (None,), "ibot": ("state_dict",)}


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
        candidates = (entry.checkpoint_key,) + _RELEASED_LAYOUT.get(entry.family, ())
    for key in candidates:
        if key is None and _is_state_dict(ckpt):
            return ckpt
        if key is not None and _is_state_dict(ckpt.get(key)):
            return ckpt[key]
    wanted = " or ".join(dict.fromkeys("the top level" if k is None else f"key {k!r}" for k in candidates))
    raise HarnessError(f"{path}: found no state dict at {wanted} (for backbone {entry.name!r}, family "
                       f"{entry.family}); keys present: {_listing(ckpt)}. Pass checkpoint_key / --checkpoint-key "
                       "naming one of them, or check that the file belongs to this family.")


def convert_checkpoint(ckpt: Any, entry: BackboneEntry, checkpoint_key: str | None = None,
                       path: Path = Path("<checkpoint>")) -> dict[str, Tensor]:
    """The timm state dict of the sub-network to evaluate in a loaded checkpoint of `entry`'s family."""
    return CONVERTERS[entry.family](_select(ckpt, entry, checkpoint_key, path))


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


def build_model(entry: BackboneEntry, **arch_overrides: Any) -> nn.Module:
    """The entry's timm architecture with its and the caller's overrides, seeded so random init is reproducible."""
    bad = sorted(set(arch_overrides) - set(ARCH_OVERRIDE_KEYS))
    if bad:
        raise HarnessError(f"architecture override {bad[0]!r} for backbone {entry.name!r} is not accepted; "
                           f"accepted: {', '.join(ARCH_OVERRIDE_KEYS)}.")
    kwargs = {**_FAMILY_KWARGS[entry.family], **entry.arch_overrides, **arch_overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_init_seed(entry))
        try:
            return timm.create_model(entry.arch, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as e:
            if "Unknown model" not in str(e):
                raise
            raise HarnessError(f"{entry.source}: backbone {entry.name!r} names arch {entry.arch!r}, which timm "
                               f"{timm.__version__} does not know; accepted: a timm model name.") from None


class Backbone(nn.Module):
    """A frozen ViT that returns tokens: [cls] first where the family has one, after or before the final norm."""

    def __init__(self, model: nn.Module, entry: BackboneEntry, weights_sha256: str):
        super().__init__()
        self.model, self.entry, self.weights_sha256 = model, entry, weights_sha256
        self.embed_dim: int = model.embed_dim
        self.depth: int = len(model.blocks)
        self.num_heads: int = model.blocks[0].attn.num_heads
        self.num_prefix_tokens: int = 1 if getattr(model, "cls_token", None) is not None else 0
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Stays in eval mode: the backbone is frozen, dropout and the like never switch on."""
        return super().train(False)

    def _embed(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Patch tokens with [cls] and position information, plus the keyword arguments every block takes."""
        m = self.model
        if isinstance(m, Beit):
            x = m.patch_embed(images)
            x = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            if m.pos_embed is not None:
                x = x + m.pos_embed
            bias = m.rel_pos_bias() if m.rel_pos_bias is not None else None
            return m.pos_drop(x), {"shared_rel_pos_bias": bias}
        x = m._pos_embed(m.patch_embed(images))
        return m.norm_pre(m.patch_drop(x)), {}

    def _blocks(self, images: Tensor, keep: int) -> list[Tensor]:
        """The outputs of the last `keep` blocks, from one pass."""
        x, kwargs = self._embed(images)
        out = []
        for i, block in enumerate(self.model.blocks):
            x = block(x, **kwargs)
            if i >= self.depth - keep:
                out.append(x)
        return out

    def forward_taps(self, images: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Tokens at each tap ("norm": after the final LayerNorm, "prenorm": the last block's output), one pass."""
        bad = [t for t in taps if t not in TOKEN_TAPS]
        if bad:
            raise HarnessError(f"token tap {bad[0]!r} is not known; accepted: {', '.join(TOKEN_TAPS)}.")
        prenorm = self._blocks(images, 1)[-1]
        return {t: self.model.norm(prenorm) if t == "norm" else prenorm for t in taps}

    def forward_tokens(self, images: Tensor, norm: bool = True) -> Tensor:
        """All last-layer tokens (B, T, D)."""
        return self.forward_taps(images, ("norm" if norm else "prenorm",))["norm" if norm else "prenorm"]

    def forward_intermediates(self, images: Tensor, n: int, norm: bool = False) -> list[Tensor]:
        """The last `n` blocks' tokens, oldest first; `norm=True` applies the final LayerNorm to each."""
        if not 1 <= n <= self.depth:
            raise HarnessError(f"forward_intermediates: n={n} for backbone {self.entry.name!r}; "
                               f"accepted: 1 to {self.depth}.")
        return [self.model.norm(x) if norm else x for x in self._blocks(images, n)]

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_tokens(images)


def load_backbone(name: str, weights: str | Path | None = None, *, checkpoint_key: str | None = None,
                  device: str | torch.device = "cpu", expected_sha256: str | None = None,
                  **arch_overrides: Any) -> Backbone:
    """The registered backbone `name`, frozen on `device`.

    `weights` overrides where the file comes from; `checkpoint_key` picks another sub-network of it (e.g. a
    student); `expected_sha256` is the content `weights` must still have (what the plan hashed);
    `arch_overrides` change the architecture (e.g. tiny test sizes). `random_init` entries read no file.
    """
    entry = load_registry().backbone(name)
    if entry.random_init:
        if weights is not None or checkpoint_key is not None:
            raise HarnessError(f"backbone {name!r} is a random-init demo variant and reads no weights; pass "
                               "weights only to an entry with released weights.")
        return Backbone(build_model(entry, **arch_overrides), entry, RANDOM_INIT_SHA256).to(device)
    path, sha256 = resolve_weights(entry, weights, expected_sha256)  # file problems surface before a large model is built
    sd = convert_checkpoint(load_checkpoint(path), entry, checkpoint_key, path)
    model = build_model(entry, **arch_overrides)
    _load_strict(model, sd, entry, path)
    return Backbone(model, entry, sha256).to(device)
