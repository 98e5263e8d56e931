"""Weights of `timm`-family entries: timm's own loading of a file from the Hugging Face hub cache, the tag's
download URL, or --weights. The file is hashed like every other weights file, so results record what was read."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.models.digests import cached_sha256
from harness.models.weights import resolve_weights
from harness.registry import BackboneEntry
from harness.registry.timm_configs import pretrained_config


def hub_file(entry: BackboneEntry) -> Path:
    """The tag's weights file in the Hugging Face cache, downloaded when missing and the hub may be reached."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cfg = pretrained_config(entry.arch)
    names = [cfg["hf_hub_filename"]] if cfg["hf_hub_filename"] else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        try:
            return Path(hf_hub_download(cfg["hf_hub_id"], name))
        except EntryNotFoundError as e:  # the repository lacks that name -- or, offline, the cache does
            if not isinstance(e, LocalEntryNotFoundError):
                continue
            why = ("offline mode (HF_HUB_OFFLINE) forbids the download" if constants.is_offline_mode()
                   else "the hub cannot be reached")
        except Exception as e:  # no network, no access, ...: one user message for all
            why = f"downloading it failed ({type(e).__name__})"
        raise HarnessError(f"backbone {entry.name!r} (timm {entry.arch}, {entry.defined_in}): {cfg['hf_hub_id']}/{name} "
                           f"is not in the Hugging Face cache and {why}; accepted: run once with network access, or "
                           "pass a saved state dict with --weights.")
    raise HarnessError(f"backbone {entry.name!r} (timm {entry.arch}): the hub repository {cfg['hf_hub_id']} has "
                       f"none of {', '.join(names)}; accepted: pass the weights file with --weights.")


def load(entry: BackboneEntry, weights: str | Path | None, checkpoint_key: str | None,
         expected_sha256: str | None, **arch_overrides: Any) -> tuple[Any, str]:
    """(timm model with its weights, the file's sha256): `weights` if given, else the hub file, else the tag's URL
    through the harness's own download cache."""
    from harness.models.backbones import build_model

    if checkpoint_key is not None:
        raise HarnessError(f"backbone {entry.name!r} is loaded by timm, which picks its own sub-network; "
                           "accepted: no checkpoint_key / --checkpoint-key.")
    if entry.warning:
        warnings.warn(f"backbone {entry.name!r}: {entry.warning}", stacklevel=2)
    if weights is not None or not pretrained_config(entry.arch)["hf_hub_id"]:
        path, sha256 = resolve_weights(entry, weights, expected_sha256)
    else:
        path = hub_file(entry)
        sha256 = cached_sha256(path)
    return build_model(entry, pretrained_file=path, **arch_overrides), sha256
