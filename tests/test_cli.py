"""The CLI as a user meets it: 80-column output that never cuts a name, help that fits and pastes, results you
can script (table, JSON, CSV), `harness show`, and the quick sweep flags. No Ray: these run in milliseconds."""

from __future__ import annotations

import json
import re

import pytest
from results_factory import make_row

from harness.cli import QUERY_COLUMNS, build_parser, main
from harness.registry import load_registry
from harness.results.store import HASH_PREFIX, write_trial

WIDTH = 80
COMMANDS = [[], ["list"], ["show"], ["sweep"], ["submit"], ["weights"], ["leaderboard"], ["claim"], ["results"],
            ["results", "query"], ["results", "export"]]


def run(capsys, monkeypatch, *argv: str, width: int = WIDTH) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", str(width))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def results(tmp_path):
    rows = [make_row(backbone=b, aggregator=a, seed=s, lr=lr, val_top1=50 + lr, test_top1=49 + lr)
            for b in ("ijepa-vit-h14-in1k", "ijepa-vit-h14-in22k") for a in ("cls", "mean", "abmilp", "query", "ep")
            for s in (0, 1) for lr in (0.1, 1.0)]
    for trial, backbone in enumerate(("ijepa-vit-h14-in1k", "ijepa-vit-h14-in22k")):
        write_trial(tmp_path, [{**r, "trial_id": f"t{trial}"} for r in rows if r["backbone"] == backbone], [])
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_fits_80_columns_and_quotes_shell_operators(capsys, monkeypatch, command):
    with pytest.raises(SystemExit):
        run(capsys, monkeypatch, *command, "--help")
    text = capsys.readouterr().out
    assert text and max(len(line) for line in text.splitlines()) <= WIDTH, text
    for line in text.splitlines():
        if line.startswith("  harness "):  # an example: a filter with < or > must be quoted to paste
            assert not re.search(r"(?<!')\b\w+(<=|>=|<|>)[\w.]+(?!')", line), line


def test_list_never_cuts_a_name_at_80_columns(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "list")
    assert code == 0 and max(len(line.rstrip()) for line in out.splitlines()) <= WIDTH
    words = set(out.split())
    for name in load_registry().backbones:
        assert name in words, name  # whole, never "ijepa-vit-h14…"
    assert "…" not in out and "shrunk to embed_dim 64" in out  # a demo model is not shown as a ViT-H
    _, wide, _ = run(capsys, monkeypatch, "list", "backbones", width=200)
    assert "[cls]" in wide  # a header, not rich markup


def test_list_and_show_as_json_carry_licence_paper_and_origin(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "list", "--format", "json")
    listed = json.loads(out)
    assert code == 0 and set(listed) == {"backbones", "aggregators", "datasets", "recipes", "grids"}
    released = [b for b in listed["backbones"] if not b["random_init"]]
    assert released and all(b["licence"] and b["paper"].startswith("https://") and b["origin"] for b in released)
    _, out, _ = run(capsys, monkeypatch, "show", "mae-vit-b16", "--format", "json")
    shown = json.loads(out)
    assert shown["kind"] == "backbones" and shown["licence"] == "CC-BY-NC-4.0" and shown["prefix_tokens"] == 1
    assert "sha256" in shown["checksum"] and shown["filename"] or shown["url"]
    code, out, _ = run(capsys, monkeypatch, "show", "ijepa-vit-h14-in1k")
    assert code == 0 and "CC-BY-NC-4.0" in out and "arxiv.org/abs/2301.08243" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= WIDTH
    code, _, err = run(capsys, monkeypatch, "show", "no-such-thing")
    assert code == 2 and "no-such-thing" in err and "Traceback" not in err


def test_query_formats_limits_and_messages(capsys, monkeypatch, results, tmp_path):
    base = ("results", "query", "--results-dir", str(results))
    code, out, _ = run(capsys, monkeypatch, *base, "--format", "json", "--where", "aggregator=mean")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 8 and list(rows[0]) == list(QUERY_COLUMNS)
    code, out, _ = run(capsys, monkeypatch, *base, "--format", "csv", "--where", "lr>=1", "--columns", "lr,seed")
    assert out.splitlines()[0] == "lr,seed" and len(out.splitlines()) == 1 + 20
    code, out, _ = run(capsys, monkeypatch, *base, "--limit", "3")
    assert code == 0 and "the first 3 of 40 rows" in out and "Empty DataFrame" not in out
    code, out, _ = run(capsys, monkeypatch, *base, "--limit", "0")
    assert "ijepa-vit-h14-in1k" in out.split() and "ijepa-vit-h14-in22k" in out.split() and "first" not in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= WIDTH
    prefix = rows[0]["config_hash"][:HASH_PREFIX]
    assert prefix in out.split()  # the table prints the prefix the leaderboard prints
    code, out, _ = run(capsys, monkeypatch, *base, "--format", "json", "--where", f"config_hash={prefix}")
    assert [r["config_hash"] for r in json.loads(out)] == [rows[0]["config_hash"]]
    code, out, _ = run(capsys, monkeypatch, *base, "--where", "lr>100")
    assert code == 0 and out.startswith("no rows match lr>100")
    code, _, err = run(capsys, monkeypatch, *base, "--limit", "-1")
    assert code == 2 and "--limit" in err and "Traceback" not in err
    code, _, err = run(capsys, monkeypatch, "results", "query", "--results-dir", str(tmp_path / "none"))
    assert code == 2 and "no results yet" in err


def test_leaderboard_json_has_one_cell_per_aggregator_with_its_picks(capsys, monkeypatch, results):
    code, out, _ = run(capsys, monkeypatch, "leaderboard", "--results-dir", str(results), "--format", "json")
    (board,) = json.loads(out)
    assert code == 0 and board["aggregators"] == ["cls", "mean", "abmilp", "query", "ep"]
    cell = board["rows"][0]["cells"]["mean"]
    assert cell["n"] == 2 and len(cell["picks"]) == 2 and cell["mean"] == pytest.approx(50.0)
    assert not (results / "leaderboard.md").exists()  # JSON goes to stdout only


def test_leaderboard_with_five_aggregators_keeps_backbone_names_whole(capsys, monkeypatch, results):
    code, out, _ = run(capsys, monkeypatch, "leaderboard", "--results-dir", str(results))
    assert code == 0 and {"ijepa-vit-h14-in1k", "ijepa-vit-h14-in22k"} <= set(out.split())
    assert max(len(line.rstrip()) for line in out.splitlines()) <= WIDTH


def test_quick_flags_replace_epochs_seeds_and_lrs(capsys, monkeypatch, tmp_path):
    code, out, _ = run(capsys, monkeypatch, "sweep", "--grid", "demo", "--dry-run", "--epochs", "1", "--seeds", "0",
                       "--lrs", "0.3,1", "--results-dir", str(tmp_path), width=200)
    grid = load_registry().grid("demo")
    heads = len(grid.backbones) * len(grid.heads) * 2
    assert code == 0 and f"{heads} heads" in out and "cached 1ep" in out
    for flag, value in (("--epochs", "0"), ("--seeds", "a"), ("--lrs", "0,1"), ("--lrs", "-1")):
        code, _, err = run(capsys, monkeypatch, "sweep", "--grid", "demo", "--dry-run", flag, value)
        assert code == 2 and flag in err and "Traceback" not in err, (flag, value)
    args = build_parser().parse_args(["submit", "--grid", "demo", "--epochs", "2", "--seeds", "0,1"])
    assert args.epochs == 2 and args.seeds == "0,1"


def test_limit_train_keeps_the_first_images_per_class_and_is_recorded(tmp_path, monkeypatch):
    from harness.run.plan import expand
    from harness.run.quick import customise
    from harness.run.trial import run_trial

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    reg = load_registry()
    grid = customise(reg.grid("demo"), reg, backbones=["demo-mae-tiny"], epochs=1, seeds=[0], lrs=[1.0])
    (full,) = expand(grid, reg)
    (small,) = expand(customise(grid, reg, limit_train=3), reg)
    assert {h.config_hash for h in small.heads}.isdisjoint(h.config_hash for h in full.heads)
    assert [h.head_id for h in small.heads] == [h.head_id for h in full.heads]
    rows, _, _ = run_trial(small)
    num_classes = reg.dataset("digits").num_classes
    assert {r["train_size"] for r in rows} == {3 * num_classes} and {r["status"] for r in rows} == {"ok"}


def test_pages_end_with_where_they_came_from(results):
    from harness.report.leaderboard import write_leaderboards

    md, page = write_leaderboards(results)
    last = md.read_text().rstrip().splitlines()[-1]
    assert last.startswith("Made from 40 result rows by harness 0.1.0 at commit abc") and "on cpu." in last
    assert "2026-01-01 00:00 UTC" in last  # the last row's date: regenerations stay byte-identical
    assert "<footer>Made from 40 result rows" in page.read_text()
    assert '<meta name="viewport"' in page.read_text()


def test_commit_comes_from_the_submitting_checkout_with_a_dirty_flag(monkeypatch, tmp_path):
    import subprocess

    from harness.run import sweep

    monkeypatch.setenv(sweep.COMMIT_ENV, "0123abc-dirty")  # what `harness submit` hands a job
    assert sweep.git_commit() == "0123abc-dirty"
    monkeypatch.delenv(sweep.COMMIT_ENV)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    assert sweep.git_commit() == head + ("-dirty" if dirty else "")
