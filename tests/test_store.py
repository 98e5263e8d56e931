"""The results store: round trip, atomic and concurrent writes, schema checks, latest-row dedupe, selection."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from results_factory import T0, make_curve, make_row

from harness.errors import HarnessError
from harness.results import store as results_store
from harness.results.selection import select_best
from harness.results.store import (CURVES_SCHEMA, RESULTS_SCHEMA, SCHEMA_VERSION, completed_hashes, export, query, read_curves,
                           read_results, write_trial)


def _trial(trial_id: str, n: int = 3, **overrides) -> list[dict]:
    return [make_row(trial_id=trial_id, lr=0.01 * (i + 1), val_top1=40.0 + i, **overrides) for i in range(n)]


def _write_many(root: str, worker: int, trials: int = 4) -> None:
    for t in range(trials):
        rows = _trial(f"w{worker}-t{t}", n=20, seed=worker * 100 + t)
        write_trial(Path(root), rows, [make_curve(r["config_hash"], e) for r in rows for e in range(3)])


def test_round_trip_keeps_values_and_types(tmp_path):
    rows = _trial("t1")
    rows[1].update(status="diverged", diverged_step=17, val_top1=None, test_top1=None)
    curves = [make_curve(rows[0]["config_hash"], e) for e in range(3)]
    path = write_trial(tmp_path, rows, curves)
    assert path.parent == tmp_path / "rows" / "grid=demo" and path.name.startswith("t1-")
    df = read_results(tmp_path)
    assert list(df.columns) == RESULTS_SCHEMA.names and len(df) == 3
    got = df.set_index("config_hash").loc[rows[1]["config_hash"]]
    assert got["status"] == "diverged" and got["diverged_step"] == 17 and pd.isna(got["test_top1"])
    assert str(df["diverged_step"].dtype) == "Int64" and df["ended_at"].iloc[0] == T0 + timedelta(seconds=1)
    c = read_curves(tmp_path)
    assert list(c.columns) == CURVES_SCHEMA.names and c["epoch"].tolist() == [0, 1, 2]


def test_empty_or_missing_folder_gives_empty_frames(tmp_path):
    assert read_results(tmp_path / "nothing").columns.tolist() == RESULTS_SCHEMA.names
    assert read_results(tmp_path).empty and read_curves(tmp_path).empty and completed_hashes(tmp_path) == set()


@pytest.mark.parametrize("change, word", [({"extra": 1}, "extra"), ({"schema_version": 1}, "schema_version"),
                                          ({"status": "done"}, "status.*ok, diverged, failed, not-applicable")])
def test_bad_rows_are_bugs(tmp_path, change, word):
    row = make_row(**change)
    with pytest.raises(ValueError, match=word):
        write_trial(tmp_path, [row], [])


def test_missing_key_is_named(tmp_path):
    row = make_row()
    del row["wall_s"]
    with pytest.raises(ValueError, match="wall_s"):
        write_trial(tmp_path, [row], [])
    assert not (tmp_path / "rows").exists()


def test_one_trial_per_call_and_curves_must_belong(tmp_path):
    with pytest.raises(ValueError, match="one trial"):
        write_trial(tmp_path, _trial("a") + _trial("b"), [])
    with pytest.raises(ValueError, match="not in this trial"):
        write_trial(tmp_path, _trial("a"), [make_curve("f" * 64, 0)])


def test_leftover_temp_file_is_never_read(tmp_path):
    write_trial(tmp_path, _trial("t1"), [])
    folder = tmp_path / "rows" / "grid=demo"
    (folder / ".t2-dead.parquet.tmp").write_bytes(b"PAR1 torn")
    assert len(read_results(tmp_path)) == 3


def test_odd_grid_names_stay_inside_the_store(tmp_path):
    path = write_trial(tmp_path, _trial("../x", grid="../../evil grid"), [])
    assert path.resolve().is_relative_to((tmp_path / "rows").resolve())
    assert read_results(tmp_path)["grid"].unique().tolist() == ["../../evil grid"]


def test_concurrent_threads_and_processes_lose_and_tear_nothing(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda w: _write_many(str(tmp_path), w), range(4)))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_many, [str(tmp_path)] * 2, [10, 11]))
    df = read_results(tmp_path)
    assert len(df) == 6 * 4 * 20 and df["config_hash"].is_unique
    assert len(read_curves(tmp_path)) == 6 * 4 * 20 * 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_latest_row_per_config_wins_and_its_curves(tmp_path):
    first = make_row(status="failed", error="OOM", val_top1=None, test_top1=None, trial_id="a")
    second = make_row(trial_id="b", val_top1=77.0, ended_at=T0 + timedelta(hours=1))
    assert first["config_hash"] == second["config_hash"]
    write_trial(tmp_path, [second], [make_curve(second["config_hash"], 0, val_top1=77.0)])
    write_trial(tmp_path, [first], [make_curve(first["config_hash"], 0, val_top1=1.0)])
    df = read_results(tmp_path)
    assert len(df) == 1 and df["val_top1"].iloc[0] == 77.0
    assert read_curves(tmp_path)["val_top1"].tolist() == [77.0]
    assert completed_hashes(tmp_path) == {second["config_hash"]}


def test_completed_hashes_excludes_only_failed(tmp_path):
    rows = [make_row(status=s, lr=i * 0.1) for i, s in enumerate(("ok", "diverged", "failed", "not-applicable"))]
    write_trial(tmp_path, rows, [])
    assert completed_hashes(tmp_path) == {r["config_hash"] for r in rows if r["status"] != "failed"}


def _write_raw(root: Path, table: pa.Table) -> Path:
    folder = root / "rows" / "grid=old"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "x.parquet")
    return folder / "x.parquet"


def test_other_schema_version_is_named(tmp_path):
    table = pa.Table.from_pylist([make_row()], schema=RESULTS_SCHEMA)
    table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                             pa.array([1], pa.int32()))
    path = _write_raw(tmp_path, table)
    with pytest.raises(HarnessError, match=rf"{path}.*schema_version 1 found, {SCHEMA_VERSION} expected"):
        read_results(tmp_path)


def test_unreadable_file_is_named(tmp_path):
    folder = tmp_path / "rows" / "grid=x"
    folder.mkdir(parents=True)
    (folder / "junk.parquet").write_text("not parquet")
    with pytest.raises(HarnessError, match=rf"{folder / 'junk.parquet'}: not a readable Parquet results file"):
        read_results(tmp_path)


def test_missing_columns_are_named(tmp_path):
    table = pa.Table.from_pylist([make_row()], schema=RESULTS_SCHEMA).drop_columns(["val_top1", "seed"])
    path = _write_raw(tmp_path, table)
    with pytest.raises(HarnessError, match=rf"{path}: missing columns seed, val_top1"):
        read_results(tmp_path)


def test_read_results_columns(tmp_path):
    write_trial(tmp_path, _trial("t1"), [])
    df = read_results(tmp_path, ["lr", "backbone"])
    assert df.columns.tolist() == ["lr", "backbone"] and sorted(df["lr"]) == [0.01, 0.02, 0.03]
    with pytest.raises(HarnessError, match="unknown column.*colour; accepted columns: config_hash"):
        read_results(tmp_path, ["colour"])


def test_select_best_matches_a_plain_pandas_rule_on_random_data():
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({
        "backbone": rng.choice(["a", "b", "c"], n), "dataset": rng.choice(["d1", "d2"], n), "protocol": "cached",
        "aggregator": rng.choice(["cls", "mean", "ep"], n), "seed": rng.integers(0, 3, n),
        "lr": rng.choice([0.001, 0.01, 0.1], n), "wd": rng.choice([0.0, 0.1], n),
        "val_top1": rng.integers(0, 5, n).astype(float), "test_top1": rng.random(n),
        "status": rng.choice(["ok", "ok", "ok", "diverged"], n), "grid": "g", "optimizer": "sgd", "recipe": "",
        "epochs": 1, "batch_size": 8, "warmup_epochs": 0, "token_tap": "norm", "aggregator_options": "{}"})
    keys = ["backbone", "dataset", "protocol", "aggregator", "seed"]  # the recipe columns are constant here
    expected = (df[df["status"] == "ok"].sort_values(keys + ["val_top1", "lr", "wd"],
                                                      ascending=[True] * 5 + [False, True, True])
                .drop_duplicates(keys).reset_index(drop=True))
    pd.testing.assert_frame_equal(select_best(df), expected)


def test_select_best_uses_val_with_lr_then_wd_ties():
    rows = [
        make_row(lr=0.1, wd=0.0, val_top1=60.0, test_top1=50.0),
        make_row(lr=0.01, wd=0.0, val_top1=55.0, test_top1=70.0),  # test-best, never selected
        make_row(lr=1.0, wd=0.0, status="diverged", val_top1=None, test_top1=None),
        make_row(aggregator="mean", lr=0.1, wd=0.1, val_top1=60.0, test_top1=1.0),
        make_row(aggregator="mean", lr=0.1, wd=0.0, val_top1=60.0, test_top1=2.0),
        make_row(aggregator="mean", lr=0.3, wd=0.0, val_top1=60.0, test_top1=3.0),
        make_row(aggregator="mean", lr=0.1, seed=1, val_top1=10.0, test_top1=4.0),
    ]
    df = pd.DataFrame(rows)
    best = select_best(df)
    assert best[["aggregator", "seed", "test_top1"]].values.tolist() == [["cls", 0, 50.0], ["mean", 0, 2.0],
                                                                         ["mean", 1, 4.0]]
    assert select_best(df[df["status"] != "ok"]).empty


@pytest.fixture
def store(tmp_path) -> Path:
    rows = [make_row(aggregator=a, lr=lr, random_init=a == "mean", val_top1=10 * i, diverged_step=None)
            for i, (a, lr) in enumerate([("cls", 0.1), ("cls", 0.01), ("mean", 0.1), ("mean", 1.0)])]
    rows[3].update(status="diverged", diverged_step=5, ended_at=T0 + timedelta(days=1))
    write_trial(tmp_path, rows, [])
    return tmp_path


@pytest.mark.parametrize("filters, expected", [
    ([], 4),
    (["aggregator=mean"], 2),
    (["aggregator != mean"], 2),
    (["lr<0.1"], 1),
    (["lr>=0.1", "aggregator==cls"], 1),
    (["random_init=true"], 2),
    (["diverged_step=null"], 3),
    (["diverged_step>=5"], 1),
    (["ended_at>2026-01-01T12:00"], 1),
    (["val_top1>=20", "status=ok"], 1),
])
def test_query_filters(store, filters, expected):
    assert len(query(store, filters)) == expected


def test_query_columns(store):
    df = query(store, ["aggregator=cls"], ["lr", "val_top1"])
    assert df.columns.tolist() == ["lr", "val_top1"] and sorted(df["lr"]) == [0.01, 0.1]


@pytest.mark.parametrize("filters, columns, message", [
    (["colour=red"], None, "unknown column 'colour'; accepted columns: config_hash, trial_id"),
    (["lr<fast"], None, "value 'fast' is not a number"),
    (["seed=1.5"], None, "value '1.5' is not an integer"),
    (["random_init>true"], None, "booleans compare with = and != only"),
    (["ended_at>yesterday-ish"], None, "is not an ISO date"),
    (["lr~0.1"], None, "not COLUMN OP VALUE"),
    ([], ["lr", "speed"], "unknown column.*speed; accepted columns: config_hash"),
])
def test_query_errors_name_the_problem(store, filters, columns, message):
    with pytest.raises(HarnessError, match=message):
        query(store, filters, columns)


def test_export_csv_and_parquet(store, tmp_path):
    csv = export(store, "csv", tmp_path / "out" / "r.csv")
    back = pd.read_csv(csv)
    assert back.columns.tolist() == RESULTS_SCHEMA.names and len(back) == 4
    assert pd.read_csv(csv, dtype=str)["diverged_step"].dropna().tolist() == ["5"]
    parquet = export(store, "parquet", tmp_path / "r.parquet")
    assert pq.read_schema(parquet).equals(RESULTS_SCHEMA) and pq.read_table(parquet).num_rows == 4
    with pytest.raises(HarnessError, match="accepted: csv, parquet"):
        export(store, "xlsx", tmp_path / "r.xlsx")
    with pytest.raises(HarnessError, match="is a folder"):
        export(store, "csv", tmp_path)


def test_predictions_round_trip_latest_run_only(tmp_path):
    """Each head's correctness bits come back for its latest run; heads without predictions are absent."""
    first, other = make_row(ended_at=T0), make_row(seed=1)
    labels = np.arange(13) % 3
    wrong = results_store.prediction_record(first["config_hash"], (labels + 1) % 3, labels)
    write_trial(tmp_path, [first, other], [], [wrong])
    rerun = make_row(ended_at=T0 + timedelta(hours=1))
    predicted = labels.copy()
    predicted[::4] = 0
    write_trial(tmp_path, [rerun], [], [results_store.prediction_record(rerun["config_hash"], predicted, labels)])
    correct = results_store.read_correct(tmp_path, {first["config_hash"], other["config_hash"]})
    assert set(correct) == {first["config_hash"]}
    assert np.array_equal(correct[first["config_hash"]], predicted == labels)
    assert results_store.predictions_bytes(heads=1050, test_images=50_000) < 120e6  # the claim grid on ImageNet
