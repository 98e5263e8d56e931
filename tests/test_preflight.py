"""User errors are found on the driver before Ray starts (checkpoints, datasets, the results folder), and a sweep
that has nothing to run still regenerates a leaderboard older than the rows."""

import os

import pytest

from harness.cli import main
from harness.registry import load_registry
from harness.results import store
from results_factory import make_row


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the sweep would start Ray."""
    import harness.run.sweep as sweep

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(sweep, "run_sweep", refuse)


def test_a_missing_checkpoint_is_found_before_ray(tmp_path, monkeypatch, capsys, no_ray):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    code = main(["sweep", "--grid", "claim", "--backbones", "simmim-vit-b16", "--datasets", "digits",
                 "--results-dir", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be downloaded by script" in err and "Traceback" not in err


def test_a_missing_dataset_is_found_before_ray(tmp_path, monkeypatch, capsys, no_ray):
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path / "data"))
    code = main(["sweep", "--grid", "demo", "--backbones", "demo-mae-tiny", "--datasets", "cifar10",
                 "--results-dir", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "data" / "cifar10") in err and "--download" in err


@pytest.mark.parametrize("kind", ["file", "read-only", "full"])
def test_an_unusable_results_folder_is_found_before_ray(tmp_path, monkeypatch, capsys, no_ray, kind):
    results = tmp_path / "results"
    if kind == "file":
        results.write_text("not a folder")
    elif kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        results.mkdir()
        results.chmod(0o500)
    else:
        import shutil

        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1024))
    code = main(["sweep", "--grid", "demo", "--backbones", "demo-mae-tiny", "--results-dir", str(results),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"results folder {results}" in err and "accepted: a writable folder" in err


def test_nothing_to_run_still_regenerates_a_stale_leaderboard(tmp_path, capsys, no_ray):
    from harness.registry import load_registry
    from harness.run.plan import expand

    grid = load_registry().grid("demo")
    (trial, *_) = expand(grid, load_registry())
    rows = [make_row(backbone=trial.backbone, config_hash=h.config_hash, trial_id=trial.trial_id, lr=h.lr,
                     seed=h.seed, aggregator=h.aggregator.name, head_id=h.head_id) for h in trial.heads]
    store.write_trial(tmp_path, rows, [])  # the sweep was killed before its leaderboard
    assert main(["sweep", "--grid", "demo", "--backbones", trial.backbone, "--results-dir", str(tmp_path)]) == 0
    assert "Nothing to run" in capsys.readouterr().out and (tmp_path / "leaderboard.md").is_file()
    before = (tmp_path / "leaderboard.md").stat().st_mtime_ns
    assert main(["sweep", "--grid", "demo", "--backbones", trial.backbone, "--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard.md").stat().st_mtime_ns == before  # fresh: left alone


def test_rows_the_store_refuses_mid_sweep_are_kept_and_imported_by_the_next_run(tmp_path, monkeypatch):
    import errno
    from types import SimpleNamespace

    from harness.run.plan import TrialPlan
    from harness.run.sweep import _StoreAndShow

    plan = TrialPlan(trial_id="t0", grid="demo", backbone="demo-mae-tiny", dataset="digits", protocol="cached",
                     epochs=1, batch_size=8, warmup_epochs=0, claim_margin=0.5, heads=(),
                     backbone_entry=load_registry().backbone("demo-mae-tiny"),
                     dataset_entry=load_registry().dataset("digits"))
    row = make_row(trial_id="t0")
    callback = _StoreAndShow([plan], tmp_path, None)
    real = store.write_trial

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "write_trial", full)
    callback.on_trial_result(0, [], SimpleNamespace(config={"index": 0}), {"payload": store.payload([row], [])})
    assert callback.state[0] == "done" and "No space left" in callback.unwritten[0][1]  # the sweep goes on
    kept = store.keep_for_recovery(tmp_path, callback.unwritten[0][0])
    assert kept.parent == tmp_path / store.RECOVERY
    monkeypatch.setattr(store, "write_trial", real)
    assert store.import_recovered(tmp_path) == 1 and not list(kept.parent.iterdir())
    assert store.completed_hashes(tmp_path) == {row["config_hash"]}


def test_a_second_sweep_into_a_held_results_folder_is_told_who_holds_it(tmp_path, capsys, no_ray):
    from harness.run.preflight import hold_results_dir

    held = hold_results_dir(tmp_path)  # the first sweep
    try:
        code = main(["sweep", "--grid", "demo", "--backbones", "demo-mae-tiny", "--results-dir", str(tmp_path),
                     "--no-progress"])
        err = capsys.readouterr().err.replace("\n", "")
        assert code == 2 and "another sweep holds" in err and f"pid {os.getpid()}" in err
    finally:
        held.close()
