"""The attention-diagnostic table: where each block's [cls] and patch queries put their attention.

One Parquet file per backbone x dataset under `<results>/attention/`, written atomically, one row per block x
head (or "mean" over heads) x metric, with the spread over images. Versioned like the result rows and read back
without torch or Ray, so the leaderboard can show it at any time.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.config import safe_name
from harness.errors import HarnessError

ATTENTION_SCHEMA_VERSION = 1
ATTENTION_DIR = "attention"

# metric -> what it measures, in the words of the table and the pages
METRICS: dict[str, str] = {
    "cls_self": "[cls] -> itself: share of the [cls] query's attention on the [cls] key",
    "cls_patch_entropy": "[cls] -> patches: normalised entropy over the patch keys (1 = uniform)",
    "cls_patch_top10": "[cls] -> patches: share of its patch attention on its top 10% of patches",
    "patch_self": "patch -> itself: mean share of a patch query's attention on its own key",
    "patch_entropy": "patch -> patches: mean normalised entropy of patch queries over patch keys",
    "patch_top10": "patch -> patches: mean share of patch-to-patch attention on the top 10% of patches",
    "patch_to_cls": "patch -> [cls]: mean share of patch attention on the [cls] key",
    "patch_to_registers": "patch -> registers: mean share of patch attention on the register tokens",
    "attention_distance": "mean attention distance of patch queries over patch keys, in patches",
}
# metrics that need a [cls] token, or register tokens; a backbone without them records them as not applicable
NEEDS_CLS = ("cls_self", "cls_patch_entropy", "cls_patch_top10", "patch_to_cls")
NEEDS_REGISTERS = ("patch_to_registers",)

SCHEMA = pa.schema([
    ("schema_version", pa.int32()), ("backbone", pa.string()), ("family", pa.string()),
    ("random_init", pa.bool_()), ("weights_sha256", pa.string()), ("dataset", pa.string()),
    ("split", pa.string()), ("images", pa.int64()), ("image_seed", pa.int64()), ("block", pa.int32()),
    ("head", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("spread", pa.float64()),
    ("applicable", pa.bool_()), ("harness_version", pa.string()), ("created_at", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)


def table_path(root: Path, backbone: str, dataset: str) -> Path:
    return Path(root) / ATTENTION_DIR / f"{safe_name(backbone)}__{safe_name(dataset)}.parquet"


def write_attention(root: Path, rows: list[dict]) -> Path:
    """Replace the table of the rows' backbone x dataset (temporary file, then rename: never half written)."""
    if not rows:
        raise HarnessError("attention diagnostic produced no rows; nothing was written.")
    path = table_path(root, rows[0]["backbone"], rows[0]["dataset"])
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{**r, "schema_version": ATTENTION_SCHEMA_VERSION} for r in rows], schema=SCHEMA)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_attention(root: Path) -> pd.DataFrame:
    """Every attention table under `root` (an empty frame with the schema's columns when there is none)."""
    files = sorted((Path(root) / ATTENTION_DIR).glob("*.parquet"))
    frames = []
    for path in files:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise HarnessError(f"{path}: not a readable attention table ({e}); delete it and rerun "
                               "`harness attention` for that backbone and dataset.") from None
        versions = set(table.column("schema_version").to_pylist()) if "schema_version" in table.column_names else set()
        if versions != {ATTENTION_SCHEMA_VERSION}:
            raise HarnessError(f"{path}: attention table schema version {sorted(versions) or 'missing'}; accepted: "
                               f"{ATTENTION_SCHEMA_VERSION}. Rerun `harness attention` to rewrite it.")
        frames.append(table.select(list(COLUMNS)).to_pandas())
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    return pd.concat(frames, ignore_index=True).sort_values(["backbone", "dataset", "block", "head", "metric"],
                                                           kind="stable", ignore_index=True)
