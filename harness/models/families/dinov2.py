"""DINOv2 without registers (facebookresearch/dinov2): timm's VisionTransformer from the official release file.

The released `dinov2_vit*14[_reg4]_pretrain.pth` is a raw state dict of `DinoVisionTransformer` with a position
table for the 518-px pretraining grid (37x37). The official model resamples that table at every forward; here it
is resampled once, to the grid of the model being built, by the official rule -- which is not timm's for plain
DINOv2: the class defaults are bicubic without antialias with 0.1 added to the target size in the scale factor,
while the `_reg` hub entries (`dinov2_reg`, same file layout plus `register_tokens`) use bicubic with antialias at
the target size (timm's own rule). The file's grid is read from the table, never from an image size.

Reference: https://github.com/facebookresearch/dinov2 (models/vision_transformer.py `interpolate_pos_encoding`,
hub/backbones.py).
"""

from __future__ import annotations

import math
from typing import Any

from harness.models.families import Family, StateDict, register

# (interpolate_offset, interpolate_antialias) of each family, as the official hub builds it.
RESIZE_RULES = {"dinov2": (0.1, False), "dinov2_reg": (0.0, True)}


def resize_pos_embed(pos_embed: Any, grid: tuple[int, int], offset: float, antialias: bool) -> Any:
    """The official `interpolate_pos_encoding`: the [cls] row kept, the square patch table resampled to `grid`.

    Returned unchanged when the grid already matches (the official early return), since the 0.1 offset would
    otherwise move the samples even at the same size.
    """
    import torch
    import torch.nn.functional as F

    cls_row, patches = pos_embed[:, :1], pos_embed[:, 1:].float()
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"pos_embed has {patches.shape[1]} patch rows, not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    kwargs: dict = ({"scale_factor": ((grid[0] + offset) / side, (grid[1] + offset) / side)} if offset
                    else {"size": tuple(grid)})
    table = F.interpolate(patches.reshape(1, side, side, -1).permute(0, 3, 1, 2), mode="bicubic",
                          antialias=antialias, **kwargs)
    if tuple(table.shape[-2:]) != tuple(grid):
        raise ValueError(f"resampling gave a {tuple(table.shape[-2:])} grid, not {tuple(grid)}")
    table = table.permute(0, 2, 3, 1).reshape(1, -1, table.shape[1])
    return torch.cat((cls_row.float(), table), dim=1).to(pos_embed.dtype)


def convert(sd: StateDict) -> dict:
    """The whole file minus `mask_token` (masked-input training only); ViT-g's SwiGLU `w12`/`w3` are timm's
    `fc1`/`fc2` of `SwiGLUPacked`."""
    return {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v
            for k, v in sd.items() if k != "mask_token"}


def fitter(family: str):
    """Resample the table to the model's grid by `family`'s rule; with registers, timm's layout: the registers are
    `reg_token` and [cls]'s position row is folded into `cls_token` (timm adds no position to prefix tokens)."""
    offset, antialias = RESIZE_RULES[family]

    def fit(sd: StateDict, model: Any) -> dict:
        out = dict(sd)
        if "pos_embed" not in out:
            return out
        pos = resize_pos_embed(out["pos_embed"], tuple(model.patch_embed.grid_size), offset, antialias)
        if "register_tokens" in out:
            out["reg_token"] = out.pop("register_tokens")
            if "cls_token" in out:
                out["cls_token"] = out["cls_token"] + pos[:, :1]
            pos = pos[:, 1:]
        out["pos_embed"] = pos
        return out

    return fit


register(Family(name="dinov2", convert=convert, released_layout=(None,), fit=fitter("dinov2")))
