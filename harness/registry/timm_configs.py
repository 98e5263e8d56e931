"""What a timm pretrained tag says about its model, for registry entries of the `timm` family, without importing
timm on every registry read.

An entry names `<timm model>.<pretrained tag>`; its input transform (size, mean, std, crop, interpolation) comes from
timm's pretrained configuration and its architecture facts (patch size, [cls], prefix tokens, width, model class)
from the model timm builds for it (on the meta device: no weights, no memory). The answers are kept in one JSON file
per timm version (folder: `setting("timm_configs")`), so only the first registry read after a timm upgrade imports
timm; the built-in entries' answers for the timm version the project is tested with ship in `registry/timm-configs/`,
so on a fresh install with that version no registry read imports timm (or torch).
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from harness.config import setting
from harness.errors import HarnessError

# timm model classes the frozen-token wrapper reads (blocks, final norm, prefix tokens, forward_intermediates).
VIT_CLASSES = ("VisionTransformer", "Eva", "Beit")


SHIPPED = Path(__file__).resolve().parents[2] / "registry" / "timm-configs"


def _cache_file() -> Path:
    return setting("timm_configs") / f"timm-{version('timm')}.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache is rebuilt from timm


def pretrained_config(tag: str) -> dict[str, Any]:
    """The transform and architecture facts of `tag` (e.g. `vit_base_patch16_224.mae`): from the user's cache, the
    shipped answers for this timm version, or timm itself (then cached)."""
    path = _cache_file()
    known = _read(path)
    if tag not in known:
        shipped = _read(SHIPPED / path.name)
        known[tag] = shipped[tag] if tag in shipped else _from_timm(tag)
        _write(path, known)
    return known[tag]


def _from_timm(tag: str) -> dict[str, Any]:
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(tag) if "." in tag else None
    if cfg is None:
        raise HarnessError(f"timm {timm.__version__} has no pretrained tag {tag!r}; accepted: a name from "
                           "timm.list_pretrained(), '<model>.<tag>' such as vit_base_patch16_224.mae.")
    with torch.device("meta"):
        model = timm.create_model(tag, pretrained=False, num_classes=0)
    patch = model.patch_embed.patch_size if hasattr(model, "patch_embed") else None
    return {
        "img_size": int(cfg.input_size[-1]), "patch_size": int(patch[0]) if patch else 0,
        "class_token": getattr(model, "cls_token", None) is not None,
        "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 0)), "embed_dim": int(model.embed_dim),
        "mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std], "crop_pct": float(cfg.crop_pct),
        "interpolation": cfg.interpolation, "model_class": type(model).__name__, "hf_hub_id": cfg.hf_hub_id,
        "hf_hub_filename": cfg.hf_hub_filename, "url": cfg.url or "", "license": cfg.license,
    }


def _write(path: Path, known: dict[str, Any]) -> None:
    """Replace the cache file whole (a temp file renamed in), so concurrent readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(known, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
