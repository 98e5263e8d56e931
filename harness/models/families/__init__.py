"""Backbone families: each family is one module that declares everything about it in one `register(Family(...))`.

The registry validator (family names), `build_model` (timm arguments), the checkpoint loader (converter and the
released layout) and every token count (prefix tokens) read that declaration. Converters are pure
state_dict -> state_dict functions on key names, so this side imports no torch and `harness list` stays instant.
Built-in families are the modules of this package named in BUILTIN (a new family is a file here and its name
there); any other module, a test's for instance, registers one the same way at import, before the registry entry
naming it is read:

    register(Family(name="toy", convert=lambda sd: {k.replace("layers.", "blocks."): v for k, v in sd.items()}))

Family fields:
- `convert`: the family's checkpoint (the selected sub-network) -> timm's key names; loads are strict.
- `arch_kwargs`: timm constructor arguments that make the architecture match the family's own code.
- `released_layout`: where a backbone-only release keeps the weights when the entry's `checkpoint_key` is absent
  (None = the whole file is the state dict), tried after that key.
- `prefix_tokens`: entry -> tokens before the patch tokens ([cls], registers); by default 1 with a [cls] token.
  The timm model built for an entry must agree (checked when a backbone loads).
- `fit`: (converted state dict, built timm model) -> the state dict to load, for a file that must be fitted to the
  model: a position table resampled to its grid by the family's own rule, buffers timm rebuilds (RoPE periods).
  Raises ValueError when the file cannot fit. Torch, where needed, is imported inside it.
- `subnetworks` / `subnetwork`: for files whose sub-networks share one state dict under prefixes (MoCo v3's two
  encoders): their names, and (checkpoint, name) -> that sub-network's state dict, or None.
- `loader`: "module:attr" of a function (entry, weights, checkpoint_key, expected_sha256, **arch_overrides) ->
  (model with weights, sha256) for a family whose weights timm itself loads (`timm`); None: the harness's own
  strict load through `convert` and `fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.plugins import Plugins

if TYPE_CHECKING:
    from harness.registry import BackboneEntry

StateDict = Mapping[str, Any]


def class_token_only(entry: BackboneEntry) -> int:
    """Prefix tokens of a family whose only one is the optional [cls] token."""
    return int(entry.class_token)


@dataclass(frozen=True)
class Family:
    name: str
    convert: Callable[[StateDict], dict[str, Any]]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    released_layout: tuple[str | None, ...] = ()
    prefix_tokens: Callable[[BackboneEntry], int] = class_token_only
    fit: Callable[[StateDict, Any], dict[str, Any]] | None = None
    subnetworks: tuple[str, ...] = ()
    subnetwork: Callable[[StateDict, str | None], StateDict | None] | None = None
    loader: str | None = None


# in the order listings and error messages show them
BUILTIN = ("mae", "simmim", "dino", "ibot", "ijepa", "dinov2", "dinov2_reg", "dinov3", "mocov3", "timm")
_FAMILIES: Plugins[Family] = Plugins("backbone family", __name__, BUILTIN)
register, families = _FAMILIES.register, _FAMILIES.all


def strip_prefixes(sd: StateDict, prefixes: Sequence[str]) -> dict[str, Any]:
    """Remove the first matching prefix from every key (DDP's `module.`, a wrapper's `backbone.`, ...)."""
    out = {}
    for key, value in sd.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def drop_prefixes(sd: StateDict, prefixes: Sequence[str]) -> dict[str, Any]:
    """Every entry but those whose key starts with one of `prefixes`."""
    return {k: v for k, v in sd.items() if not k.startswith(tuple(prefixes))}
