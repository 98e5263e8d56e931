"""How much disk the token cache needs, checked before a sweep writes anything.

Pure arithmetic and `shutil.disk_usage`: no torch, so `--dry-run` and the sweep planner can call it cheaply.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.errors import HarnessError
from harness.data.sources import source_kinds
from harness.heads.kinds import kinds
from harness.registry import DatasetEntry

TOKEN_BYTES = 2  # float16: every token of every image
SUMMARY_TOKEN_BYTES = 4  # float32: the [cls] + patch-mean summary (2 tokens an image), where BatchNorm standardises
# each channel and float16's spacing (0.5 at 1000) would swallow the spread of a channel with a large mean
LABEL_BYTES = 8  # int64
NPY_HEADER_BYTES = 128  # numpy's .npy header for these shapes (padded to a multiple of 64)
META_BYTES = 2048  # upper bound on one entry's meta.json


def summary_only(names: Iterable[str]) -> bool:
    """Whether heads of these aggregator kinds need no more than each image's prefix tokens and the mean of its
    patch tokens (their kinds declare `summary_only`): then a cached trial stores those `num_prefix + 1` tokens
    instead of all (ViT-B/16: 2 of 197)."""
    names = set(names)
    return bool(names) and all(kinds()[n].summary_only for n in names)



def summary_taps(reads: Iterable[tuple[str, str]]) -> dict[str, bool]:
    """tap -> whether it is stored in the summary layout, from the (aggregator kind, tap) pairs a trial's heads read:
    a tap is summarised when every head reading it is of a summary kind, whatever the other taps' heads are."""
    names: dict[str, set[str]] = {}
    for kind, tap in reads:
        names.setdefault(tap, set()).add(kind)
    return {tap: summary_only(k) for tap, k in sorted(names.items())}


def predict_cache_bytes(num_images: int, num_tokens: int, embed_dim: int, taps: Sequence[str],
                        token_bytes: int = TOKEN_BYTES) -> int:
    """Bytes on disk for one split's cache entries, one per tap (tokens, labels, headers, meta); an upper bound."""
    per_tap = (num_images * num_tokens * embed_dim * token_bytes + num_images * LABEL_BYTES
               + 2 * NPY_HEADER_BYTES + META_BYTES)
    return per_tap * len(set(taps))


def planned_split_sizes(dataset: DatasetEntry) -> dict[str, int] | None:
    """{"train", "val", "test"} image counts known before reading any file, or None (e.g. a folder from the CLI).

    The pool and test counts its source declares (`options.num_images` by default); val is the stratified
    hold-out, ceil(val_fraction x pool) images, as `load_splits` carves it.
    """
    counts = source_kinds()[dataset.source].planned_counts(dataset)
    if not isinstance(counts, dict) or not all(isinstance(counts.get(k), int) for k in ("pool", "test")):
        return None
    val = math.ceil(dataset.val_fraction * counts["pool"])
    return {"train": counts["pool"] - val, "val": val, "test": counts["test"]}


def human_bytes(n: int) -> str:
    units, value, i = ("B", "KiB", "MiB", "GiB", "TiB"), float(n), 0
    while value >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{n} B" if i == 0 else f"{value:.1f} {units[i]}"


def free_bytes(folder: Path) -> int:
    """Free space of the file system that holds `folder` (or would, once its missing parents are created)."""
    probe = Path(folder).expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def ensure_cache_space(cache_dir: Path, needed_bytes: int) -> None:
    """Raise before a sweep starts if the cache it would write does not fit in the free space of `cache_dir`."""
    free = free_bytes(cache_dir)
    if needed_bytes > free:
        raise HarnessError(
            f"token cache folder {cache_dir} needs {human_bytes(needed_bytes)} ({needed_bytes} bytes) but only "
            f"{human_bytes(free)} ({free} bytes) are free there; free some space, point --cache-dir or "
            "HARNESS_CACHE_DIR at a larger disk, or use protocol = \"online\", which caches nothing.")
