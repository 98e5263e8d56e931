"""End to end, as a new user runs it: `harness sweep --grid demo` (and the claim grid on demo backbones) through
the CLI, with the local Ray instance the harness starts itself; the leaderboard's numbers come from the rows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.registry import load_registry
from harness.results import store
from harness.report.claim import claim_analysis
from harness.results.selection import select_best

pytestmark = pytest.mark.slow


def harness(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args, "--results-dir", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=600)


def test_demo_sweep_writes_parquet_and_a_leaderboard_from_its_rows(tmp_path):
    run = harness("sweep", "--grid", "demo", "--no-progress", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    root = tmp_path / "results"
    assert list((root / "rows" / "grid=demo").glob("*.parquet"))
    rows = store.read_results(root)
    grid = load_registry().grid("demo")
    assert len(rows) == len(grid.backbones) * grid.num_heads
    na = rows[rows.status == "not-applicable"]
    assert set(na.backbone) == {"demo-ijepa-tiny"} and set(na.aggregator) == {"cls"}
    assert (rows[rows.status != "not-applicable"].status == "ok").all()
    assert rows.random_init.all() and (rows.backbone_passes[rows.status == "ok"] > 0).all()

    # a leaderboard cell is the mean over seeds of the test top-1 at the validation-selected lr
    best = select_best(rows)
    cell = best[(best.backbone == "demo-mae-tiny") & (best.aggregator == "mean")].test_top1
    markdown = (root / "leaderboard.md").read_text()
    assert f"{cell.mean():.2f} ± {cell.std():.2f}" in markdown
    assert "demo-mae-tiny (random-init)" in markdown and (root / "leaderboard.html").is_file()
    assert "demo-mae-tiny" in run.stdout and "(random-init)" in run.stdout  # the terminal table

    # the demo shows the claim machinery working: every optimum inside the grid, the starred cells the board's
    table = claim_analysis(rows).table
    assert not (table.cls_lr_edge | table.mean_lr_edge).any() and "grid too narrow" not in set(table.verdict)
    assert "(edge) |" not in markdown
    for r in table[table.verdict != "not applicable"].itertuples():
        assert f"| selected per seed |  | {r.cls_test:.2f}\\* |  | {r.mean_test:.2f}\\* |" in markdown
        assert f"{r.cls_test:.2f} ± " in markdown and f"{r.mean_test:.2f} ± " in markdown

    again = harness("sweep", "--grid", "demo", "--no-progress", tmp_path=tmp_path)
    assert again.returncode == 0 and "Nothing to run" in again.stdout
    assert len(store.read_results(root)) == len(rows)


def test_claim_grid_on_demo_backbones_produces_the_verdict_section(tmp_path):
    run = harness("sweep", "--grid", "claim", "--backbones", "demo-mae-tiny,demo-ijepa-tiny", "--datasets", "digits",
                  "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--no-progress", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    rows = store.read_results(tmp_path / "results")
    assert set(rows.seed) == {0, 1, 2, 3, 4} and rows.lr.nunique() == 21
    table = claim_analysis(rows).table.set_index("backbone")
    assert table.loc["demo-mae-tiny", "n_seeds"] == 5
    assert table.loc["demo-mae-tiny", "verdict"] in {"equivalent", "mean better", "cls better", "inconclusive",
                                                     "grid too narrow"}
    assert table.loc["demo-ijepa-tiny", "verdict"] == "not applicable"
    markdown = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "## Mean pooling vs [cls]" in markdown and table.loc["demo-mae-tiny", "verdict"] in markdown
    claim = harness("claim", tmp_path=tmp_path)
    assert claim.returncode == 0 and "demo-mae-tiny" in claim.stdout


def test_the_readme_python_example_runs_offline_as_written(tmp_path):
    """The README's Python API example, verbatim, in an empty folder: it sweeps, reads, ranks and loads."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 trials, 16 heads; failed: {}" in run.stdout and "1 prefix token(s)" in run.stdout
    assert (tmp_path / "results-api" / "leaderboard.html").is_file()
    (manifest,) = (tmp_path / "results-api" / "manifests").glob("demo-*.json")
    assert '"grid_text"' in manifest.read_text()
