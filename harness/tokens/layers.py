"""Which blocks a head reads: a grid's `layers` values, and the token taps they resolve to on one backbone.

A layer choice is a block index (0-based as in timm's `model.blocks`, negative counting from the end: -1 is the
last block), `"last<n>"` (the last n blocks, DINOv2's `n_last_blocks`), or a list of indices (`[4, 8, 11]`); several
blocks are read as their tokens concatenated along the channels, oldest block first. The aggregator's `tap` says
whether each block goes through the backbone's final LayerNorm ("norm", DINOv2's `get_intermediate_layers(...,
norm=True)`) or not ("prenorm"). A tap names one block's tokens and is what the token cache stores once:
"norm" / "prenorm" for the last block, "block<i>.norm" / "block<i>" for block i of the others. No torch.
"""

from __future__ import annotations

import re
from typing import Any

from harness.errors import HarnessError

DEFAULT_LAYER = "-1"  # the last block: what every aggregator read before layers could be chosen
ACCEPTED = ('a block index (0-based, negative from the end: -1 is the last block), "last<n>" (the last n blocks), '
            'or a list of block indices such as [4, 8, 11]')
_LAST = re.compile(r"^last([1-9][0-9]*)$")
_INDEX = re.compile(r"^-?[0-9]+$")


def layer_label(value: Any) -> str | None:
    """The canonical text of one `layers` value ("-4", "8", "last4", "4+8+11"), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "+".join(map(str, value)) if len(value) > 1 else str(value[0])
    if isinstance(value, str) and (_LAST.match(value) or all(_INDEX.match(p) for p in value.split("+"))):
        return value
    return None


def layer_blocks(label: str, depth: int, where: str = "") -> tuple[int, ...]:
    """The 0-based block indices a layer label reads on a backbone of `depth` blocks, oldest first."""
    last = _LAST.match(label)
    if last:
        n = int(last.group(1))
        indices = tuple(range(-n, 0))
    else:
        indices = tuple(int(p) for p in label.split("+"))
    bad = [i for i in indices if not -depth <= i < depth]
    if bad:
        raise HarnessError(f"{where or 'layers'}: layer {label!r} reads block {bad[0]}, and the backbone has {depth} "
                           f"blocks; accepted: indices from {-depth} to {depth - 1}, or last1 to last{depth}.")
    blocks = tuple(i % depth for i in indices)
    if len(set(blocks)) != len(blocks):
        raise HarnessError(f"{where or 'layers'}: layer {label!r} reads a block twice; accepted: {ACCEPTED}.")
    return blocks


def tap_name(block: int, normed: bool, depth: int) -> str:
    """The cache's name for one block's tokens, with or without the final norm."""
    if block == depth - 1:
        return "norm" if normed else "prenorm"
    return f"block{block}.norm" if normed else f"block{block}"


def layer_taps(label: str, tap: str, depth: int, where: str = "") -> tuple[str, ...]:
    """The taps a head reads for a layer label and its aggregator's tap ("norm" or "prenorm")."""
    return tuple(tap_name(b, tap == "norm", depth) for b in layer_blocks(label, depth, where))


def parse_tap(name: str, depth: int) -> tuple[int, bool]:
    """(block index, through the final norm) of a tap name; HarnessError for a name that is not one."""
    if name in ("norm", "prenorm"):
        return depth - 1, name == "norm"
    match = re.match(r"^block([0-9]+)(\.norm)?$", name)
    if not match or int(match.group(1)) >= depth:
        raise HarnessError(f"token tap {name!r} is not known for a backbone of {depth} blocks; accepted: norm, "
                           f"prenorm, block<i> or block<i>.norm with i from 0 to {depth - 1}.")
    return int(match.group(1)), match.group(2) is not None

