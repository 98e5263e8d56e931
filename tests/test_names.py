"""Names cannot inject: the registry accepts only a documented safe alphabet and length, and every output (Markdown,
HTML, rich markup, the terminal) still escapes what reaches it, as a second line of defence."""

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from harness.errors import HarnessError
from harness.registry import load_registry, registry_dir
from harness.report.leaderboard import leaderboard_pages
from harness.report.markdown import md_escape
from harness.report.plain import printable
from results_factory import make_row

HOSTILE = ["tiny[/bold]closing", "[link=https://example.org]click[/link]", "clear\x1b[2Jscreen",
           "title\x1b]0;owned\x07", "row\nsplit", "<svg onload=alert(1)>", "x" * 101, "", "-leading-dash"]


def _copy(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(registry_dir(), root)
    return root


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("kind", ["backbone", "aggregator", "dataset"])
def test_registry_refuses_names_outside_the_safe_alphabet(tmp_path, kind, name):
    root = _copy(tmp_path)
    key = json.dumps(name)  # a TOML basic string
    if kind == "backbone":
        path = root / "backbones" / "extra.toml"
        path.write_text(f'[{key}]\nextends = "demo-mae-tiny"\n')
    elif kind == "aggregator":
        path = root / "aggregators-extra.toml"
        path.write_text(f'[{key}]\nkind = "mean"\ntap = "norm"\n')
    else:
        path = root / "datasets-extra.toml"
        path.write_text(f'[{key}]\nsource = "sklearn_digits"\nnum_classes = 10\n')
    with pytest.raises(HarnessError) as info:
        load_registry(root)
    message = str(info.value)
    assert str(path) in message and "letters, digits" in message and "1 to 100 characters" in message
    assert "\x1b" not in message and "\n" not in message


@pytest.mark.parametrize("stem", ["<svg onload=alert(1)>", "a[bold]b", "x" * 101])
def test_grid_file_names_outside_the_safe_alphabet_are_refused(tmp_path, stem):
    path = tmp_path / f"{stem}.toml"
    path.write_text((registry_dir() / "grids" / "demo.toml").read_text())
    with pytest.raises(HarnessError, match="grid name .* letters, digits"):
        load_registry().grid(str(path))


def test_printable_shows_control_characters_instead_of_sending_them():
    assert printable("a\x1b[2Jb\nc\x07\u202e") == "a\\x1b[2Jb\\nc\\x07\\u202e"
    assert printable("mae-vit-b16 (random-init) ± 0.5") == "mae-vit-b16 (random-init) ± 0.5"


def test_markdown_escape_keeps_a_row_a_row():
    text = md_escape("evil\n| 99.9 | **best** |\x1b[2J<svg onload=x>")
    assert "\n" not in text and "\x1b" not in text and "<svg" not in text and "\\|" in text


def _hostile_results():
    import pandas as pd

    names = ("demo-mae-tiny", "evil\n| 99 |\x1b[2J<svg onload=x>[/bold]")
    return pd.DataFrame([make_row(backbone=b, aggregator=a, seed=s, lr=lr, grid="<svg onload=x>\x1b[2J")
                         for b in names for a in ("cls", "mean") for s in (0, 1) for lr in (0.1, 1.0)])


def test_leaderboards_escape_names_that_got_into_the_results():
    results = _hostile_results()
    pages = leaderboard_pages(results)[1]
    md, page = pages["leaderboard.md"], pages["leaderboard.html"]
    for text in (md, page):
        assert "\x1b" not in text and "<svg onload" not in text
    assert not any(line.startswith("| 99 |") for line in md.splitlines())


def test_terminal_outputs_send_no_control_characters_and_read_no_markup():
    from harness.report.boards import build_boards
    from harness.report.leaderboard import render_terminal

    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=False)
    render_terminal(build_boards(_hostile_results()), console)
    assert "\x1b" not in out.getvalue() and "[/bold]" in out.getvalue()


EVIL = "evil[/bold][link=https://example.org]x\x1b]0;owned\x07\x1b[2J"


def test_sweep_progress_reads_no_markup_and_sends_no_escapes():
    from types import SimpleNamespace

    from harness.run.plan import TrialPlan
    from harness.run.sweep import _StoreAndShow

    plan = TrialPlan(trial_id="t", grid="g", backbone=EVIL, dataset="digits", protocol="cached", epochs=1,
                     batch_size=8, warmup_epochs=0, claim_margin=0.5, heads=(),
                     backbone_entry=load_registry().backbone("demo-mae-tiny"),
                     dataset_entry=load_registry().dataset("digits"))
    out = io.StringIO()
    show = _StoreAndShow([plan], Path("unused"), Console(file=out, width=300, force_terminal=False))
    show._set(SimpleNamespace(config={"index": 0}), "running")  # a MarkupError here aborted the sweep
    Console(file=out, width=300).print(show.table())
    assert "\x1b" not in out.getvalue() and "[/bold]" in out.getvalue()


def test_results_query_sends_no_escapes(tmp_path, capsys):
    from harness.cli import main
    from harness.results import store

    store.write_trial(tmp_path, [make_row(backbone=EVIL, error="boom\x1b[2J")], [])
    assert main(["results", "query", "--results-dir", str(tmp_path), "--columns", "backbone,error"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b" in out
