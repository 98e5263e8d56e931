"""Aggregator kinds: each kind is one module that declares everything about it in one `register(Kind(...))` call.

The registry validator (kind names, options), `build_head` (pooler and the head around it) and the token cache
(`summary_only`) read that declaration and nothing else. This side imports no torch, so `harness list` and
registry validation stay instant; the torch pooler is named by `pooler` and imported only when a head is built.

Built-in kinds are the modules of this package named in BUILTIN (a new kind is a file here and its name there); any
other module, a test's for instance, registers one the same way at import, before the registry entry using it is
read:

    register(Kind(name="max", pooler="my_module:build_max", options={"content": CONTENT}))

Kind fields:
- `pooler`: `build(dims: Dims, opts: dict) -> (module, pooled_width)`, a callable or a "module:attr" reference.
  The module maps tokens (B, T, D), `dims.num_prefix_tokens` prefix tokens first, to features (B, pooled_width).
  A `StackedPool` (harness/heads/pool/kernels.py) trains in the bank's attention groups through its `stacked`
  kernel; any other module must be parameter-free and trains in the linear groups (one pooling for all heads).
- `options`: name -> Option(default, accepted text, validity test); `resolve_options` checks entries and grids.
- `needs_cls`: a backbone without a [cls] token gets NotApplicable (recorded as such, never replaced).
- `summary_only`: reads only the prefix tokens and the patch-token mean, so a cached trial whose heads are all
  such kinds stores `num_prefix + 1` tokens per image instead of all of them.
- `batchnorm`, `linear_std`: the head around the pooler, BatchNorm1d(affine=False) or none (a `batchnorm` option,
  where a kind declares one, overrides it), and the linear layer's init (trunc_normal std, zero bias; None keeps
  PyTorch's default).
- `trained`: False for a readout that trains nothing (k-NN): the grid gives it no optimizer or lr, the bank never
  holds it, and `pooler` builds the features it reads.
- `refuse`: `refuse(opts, num_patches, width) -> why | None`, for a kind whose official module cannot read some
  backbones (a fixed position table, a width split into a fixed number of heads); the plan refuses such a
  combination before anything runs (either size may be None where the registry does not say).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import HarnessError
from harness.plugins import Plugins, resolve

if TYPE_CHECKING:
    from harness.registry import AggregatorEntry

LINEAR_STD = 0.01  # MAE main_linprobe (after MoCo v3): head weight ~ trunc_normal(std=0.01), bias 0


class NotApplicable(Exception):
    """The aggregator cannot read this backbone (e.g. `cls` without a [cls] token); recorded, never replaced."""


@dataclass(frozen=True)
class Option:
    default: Any
    accepted: str
    valid: Callable[[Any], bool]


def positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def choice(*values: str) -> Option:
    """An option taking one of `values`, the first by default."""
    return Option(values[0], " or ".join(repr(v) for v in values), lambda v: v in values)


FLAG_FALSE = Option(False, "true or false", lambda v: isinstance(v, bool))
# "patch": prefix tokens ([cls], registers) dropped before pooling; "all": pooled with the patches;
# "patch+registers": the register tokens pooled with the patches, [cls] dropped
CONTENT = choice("patch", "all", "patch+registers")
BATCHNORM = Option(True, "true or false (false: the Linear layer on the features alone, as DINOv2's linear heads)",
                   lambda v: isinstance(v, bool))


@dataclass(frozen=True)
class Dims:
    """What a pooler may know of the backbone; `patch_grid` (rows, cols) is None where the caller does not know it.

    `embed_dim` is the width of the tokens the head reads: `block_width` x the number of blocks it concatenates.
    Of the `num_prefix_tokens`, the last `num_registers` are register (DINOv3: storage) tokens, the first [cls].
    """

    embed_dim: int
    num_heads: int
    num_prefix_tokens: int
    patch_grid: tuple[int, int] | None = None
    num_registers: int = 0
    block_width: int | None = None  # None: one block, embed_dim

    @property
    def num_cls(self) -> int:
        return self.num_prefix_tokens - self.num_registers

    def skip(self, opts: dict[str, Any]) -> int:
        """Leading tokens a pooler drops: by its `content` option, every prefix token ("patch"), none ("all"), or
        the [cls] token only ("patch+registers")."""
        return {"patch": self.num_prefix_tokens, "all": 0,
                "patch+registers": self.num_cls}[opts.get("content", "patch")]


@dataclass(frozen=True)
class Kind:
    name: str
    pooler: str | Callable[[Dims, dict[str, Any]], tuple[Any, int]]
    options: dict[str, Option] = field(default_factory=dict)
    needs_cls: bool = False
    summary_only: bool = False
    batchnorm: bool = True
    linear_std: float | None = LINEAR_STD
    trained: bool = True
    refuse: Callable[[dict[str, Any], int | None, int | None], str | None] | None = None

    def build_pooler(self, dims: Dims, opts: dict[str, Any]) -> tuple[Any, int]:
        return resolve(self.pooler)(dims, opts)


def square_grid(kind: str) -> Callable[[dict[str, Any], int | None, int | None], str | None]:
    """`refuse` of a kind that lays the patch tokens out on a square grid (cbam, dolg)."""
    def refuse(opts: dict[str, Any], num_patches: int | None, width: int | None) -> str | None:
        if num_patches is None or math.isqrt(num_patches) ** 2 == num_patches:
            return None
        return f"aggregator kind {kind!r} needs a square patch grid; this backbone gives {num_patches} patch tokens"
    return refuse


# in the order listings and error messages show them; from simpool on, efficient probing's other poolings
# (billpsomas/efficient-probing `--cls_features <name>`)
BUILTIN = ("cls", "mean", "cls_mean", "registers", "abmilp", "query", "ep", "knn", "simpool", "esimpool", "clip",
           "siglip", "aim", "cbam", "coca", "cait", "dinovit", "jepa", "dolg", "cae")
_KINDS: Plugins[Kind] = Plugins("aggregator kind", __name__, BUILTIN)
register, kinds = _KINDS.register, _KINDS.all


def resolve_options(entry: AggregatorEntry, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- entry options <- grid overrides; an unknown option or a bad value raises HarnessError."""
    spec, overrides = kinds()[entry.kind].options, options or {}
    merged = {**entry.options, **overrides}
    for key, value in merged.items():
        where = f"aggregator {entry.name!r} ({'grid options' if key in overrides else entry.defined_in or 'entry'})"
        if key not in spec:
            accepted = ", ".join(sorted(spec)) or "none (this aggregator has no options)"
            raise HarnessError(f"{where}: unknown option {key!r}; accepted: {accepted}.")
        if not spec[key].valid(value):
            raise HarnessError(f"{where}: option {key!r} is {value!r}; accepted: {spec[key].accepted}.")
    return {key: merged.get(key, opt.default) for key, opt in spec.items()}
