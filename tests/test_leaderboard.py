"""Leaderboards: hand-computed val-selected cells, determinism, n/a and random-init cells, published column,
escaping, terminal tables, and (marked `browser`) the HTML page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
from results_factory import make_curve, make_row
from rich.console import Console

from harness.report.leaderboard import leaderboard_pages, render_terminal, write_leaderboards
from harness.report.boards import build_boards
from harness.registry import REGISTRY_DIR, load_registry
from harness.results.store import read_results, write_trial

HOSTILE = "<img src=x onerror=alert(1)>"

# (aggregator, seed, lr, wd, val_top1, test_top1): test-best lr != val-best lr in every cell.
HAND = [
    ("cls", 0, 0.01, 0.0, 60.0, 70.0), ("cls", 0, 0.1, 0.0, 65.0, 60.0), ("cls", 0, 1.0, 0.0, 50.0, 80.0),
    ("cls", 1, 0.01, 0.0, 66.0, 71.0), ("cls", 1, 0.1, 0.0, 64.0, 62.0), ("cls", 1, 1.0, 0.0, 40.0, 90.0),
    ("mean", 0, 0.1, 0.0, 70.0, 66.0), ("mean", 0, 0.1, 0.1, 70.0, 10.0), ("mean", 0, 1.0, 0.0, 70.0, 99.0),
    ("mean", 1, 0.1, 0.0, 69.0, 80.0), ("mean", 1, 1.0, 0.0, 71.0, 67.0),
]
# Selected: cls 60 (lr 0.1), 71 (lr 0.01) -> 65.50 ± 7.78; mean 66 (lr 0.1, wd 0: ties), 67 (lr 1) -> 66.50 ± 0.71.



def render_markdown(results: pd.DataFrame, registry=None) -> str:
    return leaderboard_pages(results, registry)[1]["leaderboard.md"]


def render_html(results: pd.DataFrame, registry=None, curves=None) -> str:
    return leaderboard_pages(results, registry, curves=curves)[1]["leaderboard.html"]

def _hand(backbone: str = "mae-vit-b16", **overrides) -> list[dict]:
    rows = [make_row(backbone=backbone, aggregator=a, seed=s, lr=lr, wd=wd, val_top1=v, test_top1=t, **overrides)
            for a, s, lr, wd, v, t in HAND]
    rows.append(make_row(backbone=backbone, aggregator="mean", seed=0, lr=0.01, status="diverged", diverged_step=3,
                         val_top1=None, test_top1=None, **overrides))
    return rows


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The project registry plus one backbone with a published digits number."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copytree(REGISTRY_DIR, root, dirs_exist_ok=True)
    (root / "backbones" / "published.toml").write_text(
        '["pub-vit"]\nextends = "mae-vit-b16"\npublished = { "digits/cls" = 91.5, "digits/mean" = 92.25, '
        '"imagenet-1k/cls" = 12.3 }\npublished_protocol = "cached"\npublished_source = "a test table"\n')
    return load_registry(root)


def test_cells_are_val_selected_mean_and_std_over_seeds(registry):
    (board,) = build_boards(pd.DataFrame(_hand()), registry)
    (row,) = board.rows
    cls, mean = row.cells["cls"], row.cells["mean"]
    assert [p.test_top1 for p in cls.picks] == [60.0, 71.0] and [p.lr for p in cls.picks] == [0.1, 0.01]
    assert [p.test_top1 for p in mean.picks] == [66.0, 67.0]
    assert [(p.lr, p.wd) for p in mean.picks] == [(0.1, 0.0), (1.0, 0.0)]
    # two seeds with a 7.78 sd cannot tell 65.5 from 66.5: a tie, not a best; lr* (most frequent pick, ties lowest)
    # of cls is 0.01, the edge of {0.01, 0.1, 1}; of mean 0.1, interior
    assert cls.text() == "65.50 ± 7.78 (n=2, lr at edge, tied best)"
    assert mean.text() == "66.50 ± 0.71 (n=2, tied best)"
    assert mean.gain_text() == "Δcls +1.00" and not mean.best and not cls.best and mean.tied and cls.tied
    assert board.num_results == len(HAND) + 1 and board.grids == ("demo",)
    md = render_markdown(pd.DataFrame(_hand()), registry)
    assert ("| mae-vit-b16 | 65.50 ± 7.78 (n=2, lr at edge, tied best) | 66.50 ± 0.71 (n=2, tied best), "
            "Δcls +1.00 | — |") in md
    assert "From 12 result rows (grid: demo)." in md
    board_md = md.split("## Mean pooling")[0]  # the claim section plots every lr, test-best ones included
    assert "seed 0: lr 0.1, wd 0, val 65.00, test 60.00, " in board_md
    assert "85.00" not in board_md and "89.50" not in board_md  # the test-selected means


def test_lr_curves_take_the_val_best_wd_at_each_lr(registry):
    (board,) = build_boards(pd.DataFrame(_hand()), registry)
    curve = next(c for c in board.curves if c.aggregator == "mean")
    assert curve.lrs == (0.1, 1.0) and curve.test_top1 == (73.0, 83.0) and curve.val_top1 == (69.5, 70.5)


def test_not_applicable_no_ok_head_and_random_init(registry):
    rows = [make_row(backbone="demo-ijepa-tiny", random_init=True, aggregator="cls", status="not-applicable",
                     val_top1=None, test_top1=None),
            make_row(backbone="demo-ijepa-tiny", random_init=True, aggregator="mean", val_top1=50.0, test_top1=40.0),
            make_row(backbone="demo-ijepa-tiny", random_init=True, aggregator="abmilp", status="diverged",
                     val_top1=None, test_top1=None)]
    md = render_markdown(pd.DataFrame(rows), registry)
    assert ("| demo-ijepa-tiny (random-init) | n/a | **40.00 (n=1, lr at edge)**, Δcls n/a | no ok head (1 diverged) | — |"
            in md)
    assert "carry no scientific meaning" in md


def test_published_column_and_unregistered_backbone(registry):
    rows = _hand("pub-vit") + _hand("gone-vit")
    md = render_markdown(pd.DataFrame(rows), registry)
    assert re.search(r"\| pub-vit \|.*\| cls 91\.5, mean 92\.25 \(a test table\) \|", md)  # this dataset's only
    online = render_markdown(pd.DataFrame(_hand("pub-vit", protocol="online")), registry)
    assert "91.5" not in online  # published under the cached protocol: never beside an online cell
    assert re.search(r"\| gone-vit \|.*\| — \|", md) and "12.3" not in md


def test_regeneration_is_byte_identical_and_order_free(tmp_path):
    rows = _hand() + _hand("demo-mae-tiny", random_init=True, trial_id="t1")
    write_trial(tmp_path, rows[:12], [])
    write_trial(tmp_path, rows[12:], [])
    first = [p.read_bytes() for p in write_leaderboards(tmp_path)]
    assert [p.name for p in write_leaderboards(tmp_path)] == ["leaderboard.md", "leaderboard.html"]
    assert [p.read_bytes() for p in (tmp_path / "leaderboard.md", tmp_path / "leaderboard.html")] == first
    # the regeneration reads only COLUMNS: the page equals the one rendered from every column
    assert render_markdown(read_results(tmp_path)).encode() == first[0]
    shuffled = pd.DataFrame(rows).sample(frac=1.0, random_state=3)
    assert render_markdown(shuffled) == render_markdown(pd.DataFrame(rows))


def test_empty_store_writes_pages_that_say_so(tmp_path):
    md, page = write_leaderboards(tmp_path)
    assert "No results yet." in md.read_text() and "No results yet." in page.read_text()


def test_claim_section_is_in_both_pages(registry):
    rows = pd.DataFrame(_hand())
    assert "## Mean pooling vs [cls]" in render_markdown(rows, registry)
    assert 'id="claim"' in render_html(rows, registry)


def test_hostile_names_are_escaped_everywhere(registry):
    rows = pd.DataFrame(_hand(HOSTILE) + _hand('x" onmouseover="alert(2)', trial_id="t2"))
    page = render_html(rows, registry)
    assert "<img" not in page and 'onmouseover="' not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    boards_md, claim_md = render_markdown(rows, registry).split("## Mean pooling")
    assert "<img" not in boards_md and "&lt;img src=x onerror=alert(1)&gt;" in boards_md
    # the claim section (verdict table, curve titles) escapes names the same way
    assert "<img" not in claim_md and claim_md.count("&lt;img src=x onerror=alert(1)&gt;") >= 2


def test_html_has_a_sortable_table_lr_plots_and_gain_bars(registry):
    rows = _hand() + _hand("demo-mae-tiny", random_init=True, trial_id="t1")
    page = render_html(pd.DataFrame(rows), registry)
    assert page.count('<table class="sortable">') == 1 and page.count('class="plot lr-plot"') == 2
    assert page.count('class="bar"') == 2  # mean over cls, per backbone
    assert ">0.1</text>" in page and ">1</text>" in page  # log-x decade ticks
    assert 'data-sort="66.5000"' in page and '<td class="tied" data-sort="66.5000">' in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    only_cls = [r for r in rows if r["aggregator"] == "cls"]
    assert 'class="bar"' not in render_html(pd.DataFrame(only_cls), registry)


def test_terminal_tables_show_cells_and_never_read_markup(registry):
    console = Console(record=True, width=300)
    rows = pd.DataFrame(_hand("[bold]b[/bold]") + _hand("demo-mae-tiny", random_init=True))
    render_terminal(build_boards(rows, registry), console)
    out = console.export_text()
    assert "[bold]b[/bold]" in out and "66.50 ± 0.71 (n=2, tied best) Δcls +1.00" in out
    assert "demo-mae-tiny (random-init)" in out and "carry no scientific meaning" in out


# ------------------------------------------------------------------------------------------------ browser

PROBE = """<script>
window.alert = function () { document.documentElement.setAttribute("data-alerted", "1"); };
</script>"""
CHECK = """<script>
var table = document.querySelector("table.sortable"), th = table.querySelectorAll("th");
var first = function () { return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
  return r.cells[0].textContent; }); };
th[2].click(); var desc = first(); th[2].click(); var asc = first();
var lines = function (el) {  // distinct line boxes of a cell's text
  var range = document.createRange(), tops = {}; range.selectNodeContents(el);
  Array.prototype.forEach.call(range.getClientRects(), function (r) { if (r.width > 0) tops[Math.round(r.top)] = 1; });
  return Object.keys(tops).length; };
var wraps = Math.max.apply(null, Array.prototype.map.call(document.querySelectorAll("td"), lines));
var probe = document.createElement("pre"); probe.id = "probe";
probe.textContent = JSON.stringify({desc: desc, asc: asc, tables: document.querySelectorAll("table").length,
  wraps: wraps, viewport: !!document.querySelector("meta[name=viewport]"),
  epochs: document.querySelectorAll("svg.epoch-plot").length,
  svgs: document.querySelectorAll("svg.plot").length, polylines: document.querySelectorAll("svg polyline").length,
  images: document.images.length, alerted: document.documentElement.getAttribute("data-alerted")});
document.body.appendChild(probe);
</script>"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=3000", "--dump-dom"]


@pytest.mark.browser
def test_html_page_in_headless_chromium(tmp_path, registry):
    """Scripts run, tables sort by click, plots render, and a hostile backbone name stays text."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):  # .ci/run installs it: a CI run must never skip the browser check
            pytest.fail("headless Chromium is not installed; .ci/run should have installed Debian's chromium")
        pytest.skip("the HTML page was not loaded in a browser: headless Chromium is not installed "
                    "(apt-get install chromium, or run .ci/run, which installs it)")
    lower = [{**r, "test_top1": r["test_top1"] and r["test_top1"] - 50} for r in _hand(HOSTILE)]
    rows = lower + _hand("b-vit", trial_id="t2")  # rendered by name: hostile first, so each click must reorder
    curves = pd.DataFrame([make_curve(r["config_hash"], e) for r in rows for e in range(3)])
    page = render_html(pd.DataFrame(rows), registry, curves)
    probe_page = tmp_path / "page.html"
    probe_page.write_text(page.replace("<head>", "<head>" + PROBE, 1).replace("</body>", CHECK + "</body>", 1))
    for name, width in (("desktop", 1280), ("phone", 420)):
        window = [f"--window-size={width},1600", f"--user-data-dir={tmp_path / ('profile-' + name)}"]
        out = subprocess.run([chromium, *CHROMIUM_FLAGS, *window, probe_page.as_uri()], capture_output=True,
                             text=True, timeout=60)
        match = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
        assert match, f"no probe in the dumped DOM; stderr: {out.stderr[-2000:]}"
        probe = json.loads(match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                           .replace("&amp;", "&"))
        assert probe["desc"] == ["b-vit", HOSTILE] and probe["asc"] == [HOSTILE, "b-vit"]  # column 2 = mean
        assert probe["tables"] >= 2 and probe["svgs"] >= 3 and probe["polylines"] >= 8 and probe["epochs"] >= 2
        assert probe["images"] == 0 and probe["alerted"] is None and probe["viewport"]
        assert probe["wraps"] <= 2, (name, probe["wraps"])  # no cell wraps its number onto a third line
        shot = tmp_path / f"{name}.png"
        subprocess.run([chromium, *[f for f in CHROMIUM_FLAGS if f != "--dump-dom"], *window, "--hide-scrollbars",
                        f"--screenshot={shot}", (tmp_path / "page.html").as_uri()], capture_output=True, timeout=60)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_another_grid_in_the_folder_is_its_own_board(registry):
    """`full` and `claim` rows for one backbone and dataset: each grid's board is what it would be alone."""
    claim = _hand()
    other = [dict(r, grid="full", optimizer="sgd", test_top1=(r["test_top1"] or 0) + 10.0,
                  config_hash=r["config_hash"] + "f") for r in _hand()]
    alone = build_boards(pd.DataFrame(claim), registry)
    boards = build_boards(pd.DataFrame(claim + other), registry)
    assert [b.title for b in boards] == ["digits · cached · grid demo", "digits · cached · grid full"]
    assert boards[0] == alone[0]
    assert boards[1].rows[0].cells["cls"].mean == pytest.approx(alone[0].rows[0].cells["cls"].mean + 10.0)


def test_best_in_row_only_beyond_the_uncertainty(registry):
    rows = [make_row(aggregator=a, seed=s, lr=lr, val_top1=50.0 + (lr == 0.1), test_top1=t + 0.1 * s)
            for a, t in (("cls", 70.0), ("mean", 75.0)) for s in range(3) for lr in (0.01, 0.1, 1.0)]
    (board,) = build_boards(pd.DataFrame(rows), registry)
    cells = board.rows[0].cells
    assert cells["mean"].best and not cells["mean"].tied and not cells["cls"].best and not cells["cls"].tied
    assert not cells["mean"].edge and cells["mean"].text() == "75.10 ± 0.10 (n=3)"


def test_an_aggregator_run_under_two_recipes_in_one_grid_gets_a_column_each(registry):
    rows = _hand() + [dict(r, recipe="mae-linprobe", config_hash=r["config_hash"] + "r") for r in _hand()
                      if r["aggregator"] == "mean"]
    (board,) = build_boards(pd.DataFrame(rows), registry)
    assert board.aggregators[0] == "cls" and len(board.aggregators) == 3
    alone = build_boards(pd.DataFrame(_hand()), registry)[0].rows[0].cells["mean"]
    assert [c.mean for a, c in board.rows[0].cells.items() if a.startswith("mean")] == [alone.mean] * 2
    assert any("mae-linprobe" in a for a in board.aggregators)
