"""MoCo v3 (facebookresearch/moco-v3): timm's VisionTransformer from the released pre-training checkpoint's base
encoder, or its momentum encoder when asked for.

`vit-{s,b}-300ep.pth.tar` holds `state_dict`, the DDP-wrapped `MoCo_ViT`: `module.base_encoder.*` (what
main_lincls.py evaluates), `module.momentum_encoder.*` and `module.predictor.*`. Each encoder's `head.*` is the
projector MLP, not a classifier, and is dropped. The fixed sin-cos position table is stored and used as stored.
ViT-S has 12 heads (head width 32), not timm's `vit_small` 6 (its registry entry says so).

Reference: https://github.com/facebookresearch/moco-v3 (vits.py, main_lincls.py, convert_to_deit.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.models.families import Family, StateDict, drop_prefixes, register

ENCODERS = ("base_encoder", "momentum_encoder")


def subnetwork(ckpt: Mapping, key: str | None) -> dict | None:
    """One encoder of `ckpt['state_dict']` with its `module.<encoder>.` prefix removed; None when `key` is not an
    encoder name or the file has no such encoder."""
    sd = ckpt.get("state_dict")
    if key not in ENCODERS or not isinstance(sd, Mapping):
        return None
    prefix = f"module.{key}."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)} or None


def convert(sd: StateDict) -> dict:
    """The encoder without its projector (`head.*`)."""
    return drop_prefixes(sd, ("head.",))


register(Family(name="mocov3", convert=convert, subnetworks=ENCODERS, subnetwork=subnetwork))
