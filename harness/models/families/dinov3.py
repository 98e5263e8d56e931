"""DINOv3 (facebookresearch/dinov3): timm's `Eva` from the official release file (RoPE, 4 storage tokens,
LayerNorm eps 1e-5).

Three things in the file decide the tokens and are easy to lose: the RoPE periods are stored (as bfloat16) and are
used as stored -- recomputing them in float32, as timm does, moves the tokens by about 5e-4; the key third of the
qkv bias is zeroed by the stored `bias_mask` at every forward (with RoPE a key bias is not softmax-invariant); and
the 4 storage tokens sit between [cls] and the patches. timm's `_qkvb` architectures keep the q and v biases.

Reference: https://github.com/facebookresearch/dinov3 (layers/rope_position_encoding.py, layers/attention.py,
hub/backbones.py).
"""

from __future__ import annotations

from typing import Any

from harness.models.families import Family, StateDict, register

PERIODS = "rope_embed.periods"
_RENAMES = ((".ls1.gamma", ".gamma_1"), (".ls2.gamma", ".gamma_2"), (".mlp.w1.", ".mlp.fc1_g."),
            (".mlp.w2.", ".mlp.fc1_x."), (".mlp.w3.", ".mlp.fc2."))


def convert(sd: StateDict) -> dict:
    """timm's names: `storage_tokens` -> `reg_token`, LayerScale and SwiGLU renamed, the masked qkv bias split into
    `q_bias`/`v_bias` (its key third must be masked to zero). `mask_token` and the 7B's `local_cls_norm` (training
    only: masked inputs, local crops) are dropped; the periods are kept under their own name for `fit`."""
    out: dict = {}
    for key, value in sd.items():
        if key == "mask_token" or key.endswith(".bias_mask") or key.startswith("local_cls_norm."):
            continue
        if key.endswith(".qkv.bias"):
            mask = sd.get(key + "_mask")
            q, k, v = (value * mask if mask is not None else value).chunk(3, dim=-1)
            if k.abs().max() > 0:
                raise ValueError(f"{key}: the key third of the qkv bias is not masked to zero (no {key}_mask "
                                 "zeroing it, as DINOv3's files have)")
            out[key.replace(".qkv.bias", ".q_bias")], out[key.replace(".qkv.bias", ".v_bias")] = q, v
            continue
        key = "reg_token" if key == "storage_tokens" else key
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def fit(sd: StateDict, model: Any) -> dict:
    """Put the file's periods into timm's (non-persistent) RoPE buffer; the rest loads strictly."""
    import torch

    out = dict(sd)
    periods = out.pop(PERIODS, None)
    rope = getattr(model, "rope", None)
    if periods is None or rope is None or rope.periods.shape != periods.shape:
        raise ValueError(f"{PERIODS} of shape {None if periods is None else tuple(periods.shape)} does not fit "
                         f"the model's RoPE ({None if rope is None else tuple(rope.periods.shape)})")
    with torch.no_grad():
        rope.periods.copy_(periods.to(rope.periods.dtype))
        if getattr(rope, "pos_embed_cached", None) is not None:
            rope.pos_embed_cached.copy_(rope._create_embed(rope.feat_shape, no_aug=True))
    return out


register(Family(name="dinov3", convert=convert, released_layout=(None,), fit=fit,
                prefix_tokens=lambda entry: int(entry.class_token) + 4))
