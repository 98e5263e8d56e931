"""The claim test on generated results whose truth is known, and its statistics against statsmodels."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

from harness.report.claim import (ALPHA, CLAIM_COLUMNS, _power, claim_analysis, claim_curves, claim_html, claim_markdown,
                           claim_table, claim_terminal, compare, mean_ci, seeds_needed, tost_paired)
from harness.registry import load_registry

LRS = tuple(10.0 ** e for e in np.arange(-4, 0.01, 0.5))  # 1e-4 .. 1, 9 points


def generate(cls_peak: float = 80.0, mean_peak: float = 80.0, noise: float = 0.05, seeds: int = 5,
             cls_opt: float = 1e-2, mean_opt: float = 1e-3, lrs=LRS, backbone: str = "bb", random_init=False,
             margin: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Rows of a sweep where top-1 falls 4 points per decade^2 away from each head's optimum lr, plus seed noise.

    Validation and test share the seed's noise (a good seed is good on both), so selection finds the optimum.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seeds):
        for agg, peak, opt in (("cls", cls_peak, cls_opt), ("mean", mean_peak, mean_opt)):
            shift = rng.normal(0.0, noise)
            for lr in lrs:
                acc = peak - 4.0 * (math.log10(lr) - math.log10(opt)) ** 2 + shift
                rows.append(dict(backbone=backbone, random_init=random_init, dataset="ds", protocol="cached",
                                 aggregator=agg, aggregator_kind=agg, seed=s, lr=lr, wd=0.0, status="ok",
                                 val_top1=acc + rng.normal(0.0, 1e-3), test_top1=acc, claim_margin=margin))
    return pd.DataFrame(rows)


def one(results: pd.DataFrame) -> pd.Series:
    table = claim_table(results)
    assert list(table.columns) == CLAIM_COLUMNS and len(table) == 1
    return table.iloc[0]


def test_equal_means_small_noise_are_equivalent_and_untuned_mean_loses():
    row = one(generate(noise=0.05))
    assert row.verdict == "equivalent" and row.n_seeds == 5
    assert row.cls_lr == pytest.approx(1e-2) and row.mean_lr == pytest.approx(1e-3)
    assert not row.cls_lr_edge and not row.mean_lr_edge
    assert abs(row.difference) < 0.2 and row.p_tost < 0.05 and pd.isna(row.seeds_needed)
    # at the cls optimum the mean head is a decade off its own: 4 points worse, the leaderboards' comparison
    assert row.untuned_n_seeds == 5 and row.untuned_difference == pytest.approx(-4.0, abs=0.3)
    assert row.untuned_verdict == "cls better"


def test_three_point_gap_is_cls_better():
    row = one(generate(mean_peak=77.0, noise=0.2))
    assert row.verdict == "cls better" and row.ci_high < -0.5 and row.difference == pytest.approx(-3.0, abs=0.5)


def test_mean_better_needs_the_ci_beyond_the_margin():
    assert one(generate(mean_peak=83.0, noise=0.2)).verdict == "mean better"
    d = np.array([0.3, 0.9, 0.5, 0.7, 0.4])  # CI excludes 0 but reaches inside the 0.5 margin: neither claim
    result = compare(d, 0.5)
    assert result.ci_low > 0 and result.ci_low < 0.5 and result.verdict == "inconclusive"
    assert result.seeds_needed is not None and result.seeds_needed > 5


def test_two_seeds_large_noise_are_inconclusive_with_seeds_needed():
    row = one(generate(seeds=2, noise=3.0, seed=3))
    assert row.verdict == "inconclusive" and row.n_seeds == 2
    assert row.seeds_needed > 2


def test_one_seed_is_inconclusive_without_estimate():
    row = one(generate(seeds=1))
    assert row.verdict == "inconclusive" and pd.isna(row.seeds_needed) and "at least 2" in row.note


@pytest.mark.parametrize("cls_opt, mean_opt", [(1.0, 1e-3), (1e-2, 1e-4), (1e-2, 3.0)])
def test_optimum_at_the_grid_edge_is_grid_too_narrow(cls_opt, mean_opt):
    row = one(generate(cls_opt=cls_opt, mean_opt=mean_opt))
    assert row.verdict == "grid too narrow" and "widen" in row.note
    assert row.cls_lr_edge == (cls_opt in (LRS[0], LRS[-1]))
    assert row.untuned_verdict == ("grid too narrow" if row.cls_lr_edge else "cls better")


def test_one_seed_on_the_edge_of_a_plateau_leaves_an_interior_optimum_unmarked():
    """Seeds pick their own lr; only lr* (the most frequent pick) at an edge makes the grid too narrow."""
    results = generate()
    stray = (results["seed"] == 0) & (results["aggregator"] == "cls") & np.isclose(results["lr"], LRS[-1])
    results.loc[stray, ["val_top1", "test_top1"]] = 99.0
    row = one(results)
    assert row.cls_lr == pytest.approx(1e-2) and not row.cls_lr_edge and row.verdict != "grid too narrow"
    assert "(edge) |" not in claim_markdown(claim_analysis(results))  # no lr cell marked


def test_a_single_lr_grid_is_too_narrow():
    assert one(generate(lrs=(1e-2,))).verdict == "grid too narrow"


def test_selection_is_on_validation_not_test():
    results = generate()
    bad = (results["aggregator"] == "cls") & np.isclose(results["lr"], 1e-1)
    results.loc[bad, "test_top1"] = 99.0  # best on test, not on validation: must not be chosen
    row = one(results)
    assert row.cls_lr == pytest.approx(1e-2) and row.cls_test < 81.0


def test_diverged_heads_and_missing_cls():
    results = generate()
    top = (results["aggregator"] == "mean") & (results["lr"] == LRS[-1])
    results.loc[top, ["status", "val_top1", "test_top1"]] = ["diverged", np.nan, np.nan]
    assert one(results).verdict == "equivalent"  # a diverged top lr still bounds the grid: the optimum is interior
    ijepa = generate(backbone="ijepa")
    cls = ijepa["aggregator"] == "cls"
    ijepa.loc[cls, ["status", "val_top1", "test_top1"]] = ["not-applicable", np.nan, np.nan]
    row = one(ijepa)
    assert row.verdict == "not applicable" and row.untuned_verdict == "not applicable"
    assert row.note == "cls: not applicable to this backbone" and row.n_seeds == 0


def test_every_head_diverged_is_not_applicable_without_optima():
    results = generate(seeds=2)
    results[["status", "val_top1", "test_top1"]] = ["diverged", np.nan, np.nan]
    row = one(results)
    assert row.verdict == "not applicable" and row.n_seeds == 0
    assert not row.cls_lr_edge and not row.mean_lr_edge and math.isnan(row.cls_lr) and math.isnan(row.mean_test)
    assert row.note == f"cls: no ok head (diverged {2 * len(LRS)}); mean: no ok head (diverged {2 * len(LRS)})"


def test_groups_without_both_aggregators_are_left_out():
    results = generate()
    assert claim_table(results[results["aggregator"] == "cls"]).empty
    other = generate(backbone="other").assign(aggregator="abmilp")
    assert len(claim_table(pd.concat([results, other]))) == 1


@pytest.mark.parametrize("seed", range(8))
def test_tost_and_ci_agree_with_statsmodels(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    mean, cls = rng.normal(80, 2, n), rng.normal(80, 2, n)
    mean += rng.normal(rng.normal(0, 0.5), rng.uniform(0.05, 2.0), n) - (mean - cls)
    margin = float(rng.uniform(0.1, 2.0))
    expected, _, _ = ttost_paired(mean, cls, -margin, margin)
    assert tost_paired(mean - cls, margin) == pytest.approx(expected, abs=1e-9)
    low, high = DescrStatsW(mean - cls).tconfint_mean(alpha=0.05)
    assert mean_ci(mean - cls) == pytest.approx((low, high), abs=1e-9)


def test_seeds_needed_agrees_with_statsmodels_power():
    # beyond the margin: one-sided t-test of d against the margin at alpha 0.025
    expected = TTestPower().solve_power(effect_size=(1.5 - 0.5) / 2.0, alpha=0.025, power=0.8, alternative="larger")
    assert seeds_needed(-1.5, 2.0, 0.5) == math.ceil(expected)
    # inside the margin at d = 0, P(lower) + P(upper) - 1 >= 0.8 means each one-sided test at 90% power
    expected = TTestPower().solve_power(effect_size=0.5 / 0.6, alpha=0.05, power=0.9, alternative="larger")
    assert seeds_needed(0.0, 0.6, 0.5) == math.ceil(expected)
    one_sided = TTestPower().solve_power(effect_size=0.4 / 0.6, alpha=0.05, power=0.8, alternative="larger")
    assert seeds_needed(0.1, 0.6, 0.5) >= math.ceil(one_sided)
    assert seeds_needed(0.5, 1.0, 0.5) is None and seeds_needed(0.1, 0.0, 0.5) is None


@pytest.mark.parametrize("alpha", [ALPHA, ALPHA / 2])
def test_power_agrees_with_statsmodels(alpha):
    power = TTestPower().power
    for effect, n in [(0.01, 2), (0.3, 7), (1.2, 3), (2.5, 40), (0.05, 5000), (0.8, 100_000)]:
        assert _power(effect, n, alpha) == pytest.approx(power(effect, n, alpha, alternative="larger"), abs=1e-12)


def test_zero_spread_is_decided_exactly():
    assert compare(np.array([0.2, 0.2, 0.2]), 0.5).verdict == "equivalent"
    assert compare(np.array([-3.0, -3.0]), 0.5).verdict == "cls better"


def test_curves_average_seeds_per_lr():
    curves = claim_curves(generate(noise=0.0))
    assert len(curves) == 2 * len(LRS) and (curves["n_ok"] == 5).all()
    peak = curves[(curves["aggregator"] == "mean") & np.isclose(curves["lr"], 1e-3)]
    assert peak["test_top1"].item() == pytest.approx(80.0)


def test_renderers_are_deterministic_escaped_and_label_random_init():
    results = pd.concat([generate(backbone="demo<b>", random_init=True), generate(mean_peak=77.0, noise=0.2)])
    shuffled = results.sample(frac=1.0, random_state=1)
    claim, claim_shuffled = claim_analysis(results), claim_analysis(shuffled)
    md = claim_markdown(claim)
    assert md == claim_markdown(claim_shuffled)
    assert md.startswith("## Mean pooling vs [cls]") and "demo&lt;b&gt; (random-init)" in md and "cls better" in md
    assert "demo<b>" not in md  # escaped as on the boards: Markdown would pass raw HTML through
    assert "| lr | cls val | cls test | mean val | mean test |" in md and "1.0e-03" in md
    html_text = claim_html(claim)
    assert html_text == claim_html(claim_shuffled)
    assert "demo&lt;b&gt; (random-init)" in html_text and "demo<b>" not in html_text
    assert html_text.count("<svg") == 2 and "href=" not in html_text and "src=" not in html_text
    console = Console(record=True, width=250)
    claim_terminal(claim.table, console)
    text = console.export_text()
    assert "Mean pooling vs [cls]" in text and "(random-init)" in text and "cls better" in text


def test_empty_results_render():
    empty = generate().iloc[:0]
    claim = claim_analysis(empty)
    assert "No results" in claim_markdown(claim) and "No results" in claim_html(claim)
    console = Console(record=True, width=120)
    claim_terminal(claim.table, console)
    assert "No results" in console.export_text()


def test_claim_module_imports_neither_torch_nor_ray():
    code = "import sys, harness.report.claim; sys.exit(bool({'torch', 'ray'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_claim_grid(tmp_path):
    """The claim grid parses; datasets another helper registers are stubbed only if they are not there yet."""
    root = tmp_path / "registry"
    shutil.copytree(Path(__file__).resolve().parent.parent / "registry", root)
    known = load_registry(Path(__file__).resolve().parent.parent / "registry").datasets
    stubs = [f'["{name}"]\nsource = "synthetic"\nnum_classes = 10\n' for name in ("cifar100", "imagenet-1k")
             if name not in known]
    (root / "datasets_claimstub.toml").write_text("\n".join(stubs))
    grid = load_registry(root).grid("claim")
    assert set(grid.backbones) == {"mae-vit-b16", "simmim-vit-b16", "dino-vit-b16", "ibot-vit-b16",
                                   "ijepa-vit-h14-in1k"}
    assert set(grid.datasets) == {"cifar100", "imagenet-1k"}
    heads = {h.aggregator: h for h in grid.heads}
    assert set(heads) == {"cls", "mean"} and heads["cls"].lrs == heads["mean"].lrs
    steps = np.diff(np.log10(heads["cls"].lrs))
    assert len(heads["cls"].lrs) >= 9 and np.allclose(steps, steps[0], atol=1e-4)
    assert len(grid.seeds) == 5 and grid.claim_margin == 0.5


def test_mean_diverged_at_the_cls_lr_is_reported_not_dropped_silently():
    results = generate()
    at_cls_lr = (results["aggregator"] == "mean") & np.isclose(results["lr"], 1e-2)
    results.loc[at_cls_lr, ["status", "val_top1", "test_top1"]] = ["diverged", np.nan, np.nan]
    row = one(results)
    assert row.verdict == "equivalent" and row.untuned_n_seeds == 0 and row.untuned_verdict == "inconclusive"
    assert "no ok head at the cls-selected lr for 5 seed(s)" in row.note


def test_narrow_terminal_prints_one_record_per_row_within_its_width():
    results = pd.concat([generate(backbone="demo<b>", random_init=True), generate(mean_peak=77.0, noise=0.2)])
    claim = claim_analysis(results)
    console = Console(record=True, width=80)
    claim_terminal(claim.table, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("Verdict (tuned)") == len(claim.table) == 2 and "cls better" in text
    assert "demo<b> (random-init) · " in text and "TOST at the grid's margin" in text
