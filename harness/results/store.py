"""The results store: one Parquet file per finished trial, read back as one table.

Every trial writes its own new files (`rows/grid=<grid>/<trial>-<uuid>.parquet`, and the same under `curves/` and
`predictions/`),
first under a temporary name in the same folder and then `os.replace`d into place, so concurrent trials never
share a file and a reader never sees a torn one. Re-running a configuration appends; readers keep the latest row
per `config_hash`. The schemas are written down once, here. No torch, no Ray.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.config import safe_name
from harness.errors import HarnessError

SCHEMA_VERSION = 3  # 2: warmup_epochs and recipe columns, predictions table; 3: layer and swept_options columns
_TS = pa.timestamp("us", tz="UTC")

RESULTS_SCHEMA = pa.schema([
    # configuration
    ("config_hash", pa.string()), ("trial_id", pa.string()), ("grid", pa.string()), ("head_id", pa.string()),
    ("backbone", pa.string()), ("family", pa.string()), ("random_init", pa.bool_()), ("weights_sha256", pa.string()),
    ("dataset", pa.string()), ("num_classes", pa.int64()), ("train_size", pa.int64()), ("val_size", pa.int64()),
    ("test_size", pa.int64()), ("split_seed", pa.int64()), ("aggregator", pa.string()),
    ("aggregator_kind", pa.string()), ("aggregator_options", pa.string()), ("token_tap", pa.string()),
    ("layer", pa.string()), ("swept_options", pa.string()),
    ("protocol", pa.string()), ("optimizer", pa.string()), ("recipe", pa.string()), ("lr", pa.float64()),
    ("wd", pa.float64()), ("epochs", pa.int64()), ("batch_size", pa.int64()), ("warmup_epochs", pa.int64()),
    ("seed", pa.int64()), ("claim_margin", pa.float64()),
    # outcome
    ("status", pa.string()), ("error", pa.string()), ("diverged_step", pa.int64()), ("val_top1", pa.float64()),
    ("val_top5", pa.float64()), ("test_top1", pa.float64()), ("test_top5", pa.float64()),
    ("train_loss", pa.float64()),
    # cost
    ("wall_s", pa.float64()), ("backbone_passes", pa.int64()), ("images_per_s", pa.float64()),
    # provenance
    ("harness_version", pa.string()), ("git_commit", pa.string()), ("torch_version", pa.string()),
    ("timm_version", pa.string()), ("ray_version", pa.string()), ("device", pa.string()),
    ("started_at", _TS), ("ended_at", _TS), ("schema_version", pa.int32()),
])

CURVES_SCHEMA = pa.schema([
    ("config_hash", pa.string()), ("epoch", pa.int64()), ("lr", pa.float64()), ("train_loss", pa.float64()),
    ("val_top1", pa.float64()), ("schema_version", pa.int32()),
])

# Every trained head's test predictions, in test-split order: `predicted` the top-1 class of each image as
# little-endian uint16, `correct` one bit per image (numpy packbits, big-endian bit order) whether it was right.
# 2.125 bytes per test image and head: ImageNet's 50,000 test images cost 106 kB per head.
PREDICTIONS_SCHEMA = pa.schema([
    ("config_hash", pa.string()), ("test_size", pa.int64()), ("predicted", pa.binary()), ("correct", pa.binary()),
    ("schema_version", pa.int32()),
])
PREDICTION_BYTES_PER_IMAGE = 2 + 1 / 8
MAX_CLASSES = 2**16  # `predicted` holds uint16

STATUSES = ("ok", "diverged", "failed", "not-applicable")
_ROWS, _CURVES, _PREDICTIONS = "rows", "curves", "predictions"


def prediction_record(config_hash: str, predicted: np.ndarray, labels: np.ndarray) -> dict:
    """One head's predictions-table record from its (N,) predicted classes and the (N,) test labels."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or predicted.ndim != 1:
        raise ValueError(f"predictions {predicted.shape} and labels {labels.shape} must be one equal-length vector")
    if len(predicted) and (predicted.min() < 0 or predicted.max() >= MAX_CLASSES):
        raise ValueError(f"predicted classes must lie in [0, {MAX_CLASSES}) to be stored as uint16")
    return {"config_hash": config_hash, "test_size": len(predicted),
            "predicted": predicted.astype("<u2").tobytes(), "correct": np.packbits(predicted == labels).tobytes(),
            "schema_version": SCHEMA_VERSION}


def predictions_bytes(heads: int, test_images: int) -> int:
    """What `heads` heads' test predictions add to the results folder, before Parquet's compression."""
    return int(math.ceil(heads * test_images * PREDICTION_BYTES_PER_IMAGE))


def _to_table(records: list[dict], schema: pa.Schema, what: str) -> pa.Table:
    """Records -> table of exactly `schema`; a missing or extra key or a wrong schema_version is a bug."""
    names = set(schema.names)
    for i, record in enumerate(records):
        missing, extra = sorted(names - record.keys()), sorted(record.keys() - names)
        if missing or extra:
            raise ValueError(f"{what} {i}: missing keys {missing}, extra keys {extra}")
        if record["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"{what} {i}: schema_version {record['schema_version']!r}, expected {SCHEMA_VERSION}")
    return pa.Table.from_pylist(records, schema=schema)


def _write_atomic(table: pa.Table, folder: Path, stem: str) -> Path:
    """Write to a temporary name in `folder`, fsync, then rename: readers see the whole file or none."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{stem}.parquet"
    tmp = folder / f".{stem}.parquet.tmp"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_trial(root: Path, rows: list[dict], curves: list[dict], predictions: list[dict] = ()) -> Path:
    """Store one trial's head rows (and their per-epoch curves and test predictions) as new files; returns the rows
    file."""
    if not rows:
        raise ValueError("write_trial needs at least one row")
    grids, trials = {r.get("grid") for r in rows}, {r.get("trial_id") for r in rows}
    if len(grids) != 1 or len(trials) != 1:
        raise ValueError(f"one trial per call: rows name grids {sorted(map(str, grids))}, "
                         f"trials {sorted(map(str, trials))}")
    bad = sorted({str(r.get("status")) for r in rows} - set(STATUSES))
    if bad:
        raise ValueError(f"rows with status {bad}; the schema's statuses are {', '.join(STATUSES)}")
    table = _to_table(rows, RESULTS_SCHEMA, "row")
    extras = {_CURVES: _to_table(curves, CURVES_SCHEMA, "curve"),
              _PREDICTIONS: _to_table(list(predictions), PREDICTIONS_SCHEMA, "prediction")}
    for kind, extra in extras.items():
        unknown = set(extra.column("config_hash").to_pylist()) - {r["config_hash"] for r in rows}
        if unknown:
            raise ValueError(f"{kind} for config hashes not in this trial's rows: {sorted(unknown)[:3]}")
    grid, trial = safe_name(grids.pop()), safe_name(trials.pop())
    stem = f"{trial}-{uuid.uuid4().hex}"
    for kind, extra in extras.items():  # first: once a trial's rows are visible (it counts as done), these are too
        if extra.num_rows:
            _write_atomic(extra, Path(root) / kind / f"grid={grid}", stem)
    return _write_atomic(table, Path(root) / _ROWS / f"grid={grid}", stem)


# ------------------------------------------------------------------------------------------ recovery

RECOVERY = "recovery"  # rows the driver computed but could not store (disk full); the next sweep imports them
_TIMESTAMPS = ("started_at", "ended_at")


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serialise {type(value).__name__}")


_PREDICTION_BYTES = ("predicted", "correct")


def payload(rows: list[dict], curves: list[dict], predictions: list[dict] = ()) -> str:
    """A trial's rows, curves and test predictions as JSON: what a worker sends its driver, and what a recovery
    file holds."""
    return json.dumps({"rows": rows, "curves": curves, "predictions": list(predictions)}, default=_json_default)


def from_payload(text: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(rows, curves, predictions) of a `payload`, timestamps and prediction bytes decoded."""
    data = json.loads(text)
    for row in data["rows"]:
        for key in _TIMESTAMPS:
            row[key] = datetime.fromisoformat(row[key])
    for record in data.get("predictions", []):
        for key in _PREDICTION_BYTES:
            record[key] = base64.b64decode(record[key])
    return data["rows"], data["curves"], data.get("predictions", [])


def keep_for_recovery(root: Path, text: str) -> Path:
    """Save a payload the store could not take under `root/recovery/`, else (that disk is full too) in the temporary
    folder; returns where it went."""
    name = f"{uuid.uuid4().hex}.json"
    for folder in (Path(root) / RECOVERY, Path(tempfile.gettempdir()) / "harness-recovery"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, folder / name)
            return folder / name
        except OSError:
            continue
    raise HarnessError(f"cannot save computed rows anywhere (results folder {root} and the temporary folder both "
                       "refuse writes); accepted: a results folder with free space.")


def import_recovered(root: Path) -> int:
    """Store every recovery file under `root/recovery/` and delete it; returns how many trials were imported."""
    files = sorted((Path(root) / RECOVERY).glob("*.json"))
    for path in files:
        try:
            records = from_payload(path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HarnessError(f"{path}: not a readable recovery file ({e}); move it out of {path.parent}.") from None
        write_trial(root, *records)
        path.unlink()
    return len(files)


def _files(root: Path, kind: str) -> list[Path]:
    """Finished files only: temporary names start with a dot and end in `.tmp`, so they never match."""
    return sorted(p for p in (Path(root) / kind).glob("grid=*/*.parquet") if not p.name.startswith("."))


def _read_file(path: Path, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """`columns` of one file, checked: it must have all of `schema`'s columns and its schema_version, else a
    HarnessError naming the file."""
    try:
        parquet = pq.ParquetFile(path)
        file_schema = parquet.schema_arrow
    except (OSError, pa.ArrowException) as e:
        raise HarnessError(f"{path}: not a readable Parquet results file ({e}); move it out of the results "
                           "folder.") from None
    missing = [n for n in schema.names if n not in file_schema.names]
    if missing:
        raise HarnessError(f"{path}: missing columns {', '.join(missing)}; a results file of schema version "
                           f"{SCHEMA_VERSION} has columns {', '.join(schema.names)}.")
    table = parquet.read(columns=columns)
    versions = pc.unique(table.column("schema_version")).to_pylist()
    if versions and versions != [SCHEMA_VERSION]:
        raise HarnessError(f"{path}: schema_version {', '.join(map(str, versions))} found, {SCHEMA_VERSION} "
                           "expected; read it with the harness version that wrote it, or move it out of the folder.")
    try:
        return table.cast(pa.schema([schema.field(c) for c in columns]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise HarnessError(f"{path}: column types do not match schema version {SCHEMA_VERSION} ({e}).") from None


def _read_all(root: Path, kind: str, schema: pa.Schema, columns: list[str],
              ids: dict[str, int] | None = None) -> tuple[pa.Table, dict[str, int]]:
    """`columns` (plus schema_version) of every finished file of `kind`, and an int32 `_file` column: the file's
    number in `ids` (stem -> number; default: these files in order), so a trial's rows and curves match."""
    files = _files(root, kind)
    ids = ids if ids is not None else {path.stem: i for i, path in enumerate(files)}
    columns = list(dict.fromkeys([*columns, "schema_version"]))

    def read(path: Path) -> pa.Table:
        table = _read_file(path, schema, columns)
        return table.append_column("_file", pa.array(np.full(table.num_rows, ids.get(path.stem, -1), np.int32)))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        tables = list(pool.map(read, files))
    empty = pa.schema([*(schema.field(c) for c in columns), pa.field("_file", pa.int32())]).empty_table()
    return (pa.concat_tables(tables) if tables else empty), ids


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Integers stay integers even with nulls (diverged_step), so exports never print `12.0`."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)


def _latest_rows(root: Path, columns: list[str], ids: dict[str, int] | None = None) -> tuple[pa.Table, dict[str, int]]:
    """The latest row (by `ended_at`; ties: the later file) of every config hash, in file order (`ids`: number the
    files as another kind's of the same stems, see `_read_all`)."""
    table, ids = _read_all(root, _ROWS, RESULTS_SCHEMA, ["config_hash", "ended_at", *columns], ids)
    hashes = pc.dictionary_encode(table.column("config_hash").combine_chunks())
    if len(hashes.dictionary) == table.num_rows:  # no configuration was run twice
        return table, ids
    codes = hashes.indices.to_numpy()
    ended = table.column("ended_at").cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()
    order = np.lexsort((ended, codes))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = codes[order][1:] != codes[order][:-1]
    keep = np.zeros(len(order), dtype=bool)
    keep[order[last]] = True
    return table.filter(pa.array(keep)), ids


def _check_columns(columns: list[str] | tuple[str, ...]) -> None:
    unknown = [c for c in columns if c not in RESULTS_SCHEMA.names]
    if unknown:
        raise HarnessError(f"unknown column(s) {', '.join(unknown)}; accepted columns: {_accepted_columns()}.")


def read_results(root: Path, columns: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every configuration's latest row (by `ended_at`), all columns or only `columns` (much faster on large
    stores); an empty frame with those columns if there are no results."""
    columns = list(columns) if columns is not None else RESULTS_SCHEMA.names
    _check_columns(columns)
    table, _ = _latest_rows(Path(root), columns)
    return _to_pandas(table.select(columns))


def read_curves(root: Path) -> pd.DataFrame:
    """The per-epoch curves of every configuration's latest run, ordered by config hash then epoch."""
    latest, ids = _latest_rows(Path(root), [])
    curves, _ = _read_all(Path(root), _CURVES, CURVES_SCHEMA, CURVES_SCHEMA.names, ids)
    curves = curves.join(latest.select(["config_hash", "_file"]), ["config_hash", "_file"], join_type="left semi")
    curves = curves.take(pc.sort_indices(curves, sort_keys=[("config_hash", "ascending"), ("epoch", "ascending")]))
    return _to_pandas(curves.select(CURVES_SCHEMA.names))


def last_write_ns(root: Path) -> int | None:
    """When the newest rows file under `root` was written (its mtime, ns); None when there is none."""
    return max((p.stat().st_mtime_ns for p in _files(Path(root), _ROWS)), default=None)


def read_correct(root: Path, config_hashes: set[str] | list[str]) -> dict[str, np.ndarray]:
    """Per config hash of `config_hashes` whose latest run stored test predictions: a (test_size,) bool vector,
    whether each test image was classified correctly. Hashes without stored predictions are absent."""
    root = Path(root)
    if not _files(root, _PREDICTIONS):
        return {}
    table, ids = _read_all(root, _PREDICTIONS, PREDICTIONS_SCHEMA, ["config_hash", "test_size", "correct"])
    table = table.filter(pc.is_in(table.column("config_hash"), pa.array(sorted(config_hashes), pa.string())))
    if pc.count_distinct(table.column("config_hash")).as_py() < table.num_rows:  # a rerun: keep the latest run's
        latest, _ = _latest_rows(root, [], ids)
        table = table.join(latest.select(["config_hash", "_file"]), ["config_hash", "_file"], join_type="left semi")
    return {h: np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool)
            for h, n, bits in zip(*(table.column(c).to_pylist() for c in ("config_hash", "test_size", "correct")))}


def completed_hashes(root: Path) -> set[str]:
    """Configurations that need no re-run: their latest row is final (anything but "failed")."""
    latest, _ = _latest_rows(Path(root), ["status"])
    return set(latest.filter(pc.not_equal(latest.column("status"), "failed")).column("config_hash").to_pylist())


# ------------------------------------------------------------------------------------------ query / export

EXPORT_FORMATS = ("csv", "parquet")
HASH_PREFIX = 12  # characters of a config hash that pages print; a filter on config_hash accepts such a prefix
_FILTER = re.compile(r"^\s*([A-Za-z_]\w*)\s*(!=|>=|<=|==|=|<|>)\s*(.*?)\s*$")
_OPS = {"=": "eq", "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _accepted_columns() -> str:
    return ", ".join(RESULTS_SCHEMA.names)


def _parse_value(column: str, text: str, op: str) -> object:
    """`text` as a value of `column`'s type; `null` matches missing values with = and !=."""
    kind = RESULTS_SCHEMA.field(column).type
    if text.lower() in ("null", "none", "nan") and op in ("eq", "ne"):
        return None
    try:
        if pa.types.is_boolean(kind):
            if op not in ("eq", "ne"):
                raise ValueError("booleans compare with = and != only")
            return _BOOLS[text.lower()]
        if pa.types.is_integer(kind):
            return int(text)
        if pa.types.is_floating(kind):
            return float(text)
        if pa.types.is_timestamp(kind):
            stamp = pd.Timestamp(text)
            return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return text
    except (ValueError, KeyError) as e:
        accepted = {"bool": "true or false", "int64": "an integer", "int32": "an integer", "double": "a number",
                    "timestamp[us, tz=UTC]": "an ISO date/time such as 2026-01-31T12:00"}.get(str(kind), "text")
        raise HarnessError(f"filter on '{column}': value {text!r} is not {accepted} ({e}); "
                           f"'{column}' holds {kind} values.") from None


def _mask(df: pd.DataFrame, spec: str) -> pd.Series:
    match = _FILTER.match(spec)
    if not match:
        raise HarnessError(f"filter {spec!r} is not COLUMN OP VALUE; accepted operators: =, !=, <, <=, >, >= "
                           f"(e.g. aggregator=mean, lr<=0.01); accepted columns: {_accepted_columns()}.")
    column, op, text = match.group(1), _OPS[match.group(2)], match.group(3)
    if column not in RESULTS_SCHEMA.names:
        raise HarnessError(f"filter {spec!r}: unknown column '{column}'; accepted columns: {_accepted_columns()}.")
    value = _parse_value(column, text, op)
    if column == "config_hash" and op in ("eq", "ne") and value is not None:
        prefix = df[column].str.startswith(value).fillna(False).astype(bool)
        return prefix if op == "eq" else ~prefix
    if value is None:
        missing = df[column].isna()
        return missing if op == "eq" else ~missing
    return getattr(df[column], op)(value).fillna(False).astype(bool)


def query(root: Path, filters: list[str] | tuple[str, ...] = (), columns: list[str] | None = None) -> pd.DataFrame:
    """The latest rows matching every filter (`column=value`, `column!=value`, `column<value`, ... ANDed),
    with only `columns` if given; values are parsed by the column's type, and `config_hash=` matches a prefix."""
    _check_columns(columns or ())
    df = read_results(root)
    keep = pd.Series(True, index=df.index)
    for spec in filters:
        keep &= _mask(df, spec)
    df = df[keep].reset_index(drop=True)
    return df[list(columns)] if columns else df


def export(root: Path, fmt: str, out: Path) -> Path:
    """Write the latest rows to `out` as CSV or Parquet (the store's schema, readable by any Arrow tool)."""
    if fmt not in EXPORT_FORMATS:
        raise HarnessError(f"export format {fmt!r} is not supported; accepted: {', '.join(EXPORT_FORMATS)}.")
    out = Path(out)
    if out.is_dir():
        raise HarnessError(f"export target {out} is a folder; accepted: a file path such as {out / f'results.{fmt}'}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    df = read_results(root)
    if fmt == "csv":
        df.to_csv(out, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(df, schema=RESULTS_SCHEMA, preserve_index=False), out)
    return out
