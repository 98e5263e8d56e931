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

from harness.errors import HarnessError
from harness.report.claim import CLAIM_COLUMNS, claim_analysis, claim_curves, claim_records, claim_table
from harness.report.claim_pages import claim_html, claim_markdown, claim_terminal
from harness.report.claim_stats import ALPHA, _power, compare, holm, seed_spread, seeds_needed
from harness.registry import load_registry

LRS = tuple(10.0 ** e for e in np.arange(-4, 0.01, 0.5))  # 1e-4 .. 1, 9 points


def generate(cls_peak: float = 80.0, mean_peak: float = 80.0, noise: float = 0.05, seeds: int = 5,
             cls_opt: float = 1e-2, mean_opt: float = 1e-3, lrs=LRS, backbone: str = "bb", random_init=False,
             margin: float = 0.5, seed: int = 0, grid: str = "claim", optimizer: str = "sgd",
             protocol: str = "cached") -> pd.DataFrame:
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
                rows.append(dict(backbone=backbone, random_init=random_init, dataset="ds", protocol=protocol,
                                 grid=grid, optimizer=optimizer, recipe="", epochs=90, batch_size=1024, warmup_epochs=10,
                                 token_tap="norm", aggregator_options="{}", aggregator=agg, aggregator_kind=agg,
                                 seed=s, lr=lr, wd=0.0, status="ok", val_top1=acc + rng.normal(0.0, 1e-3),
                                 test_top1=acc, claim_margin=margin,
                                 config_hash=f"{grid}/{backbone}/{protocol}/{agg}/{s}/{lr:g}"))
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
    assert math.isnan(row.ci_low) and math.isnan(row.seed_ci_low)  # no interval from one seed, no crash


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
    assert seed_spread(mean - cls).p_tost(margin) == pytest.approx(expected, abs=1e-9)
    low, high = DescrStatsW(mean - cls).tconfint_mean(alpha=0.05)
    assert seed_spread(mean - cls).ci() == pytest.approx((low, high), abs=1e-9)


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
        assert _power(effect * math.sqrt(n), n - 1, alpha) == pytest.approx(
            power(effect, n, alpha, alternative="larger"), abs=1e-12)


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
    assert "<svg" not in html_text and "href=" not in html_text and "src=" not in html_text  # boards draw the lr plots
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
                                   "dinov2-vit-b14-reg4", "dinov3-vit-b16", "ijepa-vit-h14-in1k"}
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
    assert "no ok head at the cls-selected lr for 5 of 5 seed(s)" in row.note and row.failed_seeds_at_cls_lr == 5


def test_narrow_terminal_prints_one_record_per_row_within_its_width():
    results = pd.concat([generate(backbone="demo<b>", random_init=True), generate(mean_peak=77.0, noise=0.2)])
    claim = claim_analysis(results)
    console = Console(record=True, width=80)
    claim_terminal(claim.table, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("Verdict (tuned)") == len(claim.table) == 2 and "cls better" in text
    assert "demo<b> (random-init) · " in text and "TOST at the grid's margin" in text


# ------------------------------------------------------------------ issue 14: grids, failures, test set, family


def test_another_grid_in_the_folder_changes_no_verdict():
    """The README writes `full` and `claim` into one folder: the claim grid's verdicts are those of its rows alone.

    On the code before issue 14 the two grids were one group: LARS and SGD heads selected together and the grid
    edges the union of both grids."""
    claim = generate(noise=0.05, lrs=LRS[2:7], cls_opt=10 ** -2.0, mean_opt=10 ** -2.0)  # interior: equivalent
    other = generate(grid="full", optimizer="lars", cls_peak=82.0, mean_peak=79.0, cls_opt=1.0, lrs=LRS, seed=5)
    alone = claim_table(claim)
    mixed = claim_table(pd.concat([other, claim]))
    assert len(mixed) == 2 and set(mixed["grid"]) == {"claim", "full"}
    assert mixed[mixed["grid"] == "claim"].reset_index(drop=True).equals(alone)
    assert alone.iloc[0].verdict == "equivalent"
    assert mixed[mixed["grid"] == "full"].iloc[0].verdict == "grid too narrow"
    # a named recipe in the same grid (its settings changed between runs) is its own group too
    recipe = claim.assign(recipe="mae-linprobe", config_hash=claim["config_hash"] + "/r",
                          test_top1=claim["test_top1"] + 5.0 * (claim["aggregator"] == "mean"))
    both = claim_table(pd.concat([recipe, claim]))
    assert both["recipe"].tolist() == ["", "mae-linprobe"] and both.iloc[[0]].reset_index(drop=True).equals(alone)
    assert both.iloc[1].verdict == "mean better"


def test_a_seed_failing_at_the_cls_lr_counts_against_mean():
    """Two of five seeds' mean heads diverge at the cls-selected lr; the three survivors alone say "equivalent"
    (what the code before issue 14 reported): the failures make it inconclusive and the table counts them."""
    results = generate(noise=0.05, mean_opt=1e-2)
    bad = (results["aggregator"] == "mean") & np.isclose(results["lr"], 1e-2) & results["seed"].isin([0, 1])
    results.loc[bad, ["status", "val_top1", "test_top1"]] = ["diverged", np.nan, np.nan]
    row = one(results)
    assert compare(np.zeros(3) + 0.01, 0.5).verdict == "equivalent"  # what three surviving seeds would say
    assert row.untuned_n_seeds == 3 and row.failed_seeds_at_cls_lr == 2
    assert row.untuned_verdict == "inconclusive" and "2 of 5 seed(s): they count against mean" in row.note
    assert "2 of 5 seeds failed" in claim_markdown(claim_analysis(results))


def _predictions(n: int, disagree: float):
    """cls right on 80% of n images; mean differs from it on a `disagree` fraction, half each way (same top-1)."""
    cls = np.zeros(n, dtype=bool)
    cls[: int(0.8 * n)] = True
    mean = cls.copy()
    k = int(round(disagree * n / 2))
    mean[:k] = False  # cls right, mean wrong
    mean[-k or n:] = True  # mean right, cls wrong
    return cls, mean


@pytest.mark.parametrize("n, disagree", [(10_000, 0.10), (2_000, 0.30), (50_000, 0.02)])
def test_test_set_interval_has_the_width_the_formula_predicts(n, disagree):
    """Every seed identical (zero seed spread): the interval is the test set's alone, 2 t(N-1) 100 sqrt(q/(N-1)),
    about 0.3 points of standard error for 10% disagreement on 10,000 images."""
    from scipy import stats

    cls, mean = _predictions(n, disagree)
    q = float(np.mean(cls != mean))
    row = claim_table(generate(noise=0.0), lambda hashes: {h: mean if "/mean/" in h else cls for h in hashes}).iloc[0]
    se = 100 * math.sqrt(q / (n - 1))  # var(e) with ddof 1 over N, e in {-1, 0, 1} with mean 0
    assert row.test_images == n and row.ci_high - row.ci_low == pytest.approx(2 * stats.t.ppf(0.975, n - 1) * se)
    assert row.seed_ci_low == row.seed_ci_high == 0.0  # the seeds alone see no uncertainty at all
    if (n, disagree) == (10_000, 0.10):
        assert se == pytest.approx(0.316, abs=0.001)  # the figure: comparable to the 0.5-point margin
        # the seeds alone (zero spread) would call the heads equivalent; with the test set, TOST cannot
        assert one(generate(noise=0.0)).verdict == "equivalent" and row.verdict == "inconclusive"
        assert 0.05 < row.p_tost < 0.07


def test_identical_heads_give_a_zero_width_interval():
    cls, _ = _predictions(1_000, 0.1)
    row = claim_table(generate(noise=0.0), lambda hashes: {h: cls for h in hashes}).iloc[0]
    assert row.test_images == 1_000 and row.ci_low == row.ci_high == row.difference == 0.0
    assert row.verdict == "equivalent" and row.note == ""


def test_without_test_predictions_the_note_says_the_interval_is_seeds_only():
    results = generate(noise=0.05)
    row = claim_table(results, lambda hashes: {}).iloc[0]
    assert row.test_images == 0 and (row.ci_low, row.ci_high) == (row.seed_ci_low, row.seed_ci_high)
    assert "no stored test predictions for 10 selected head(s)" in row.note
    empty = claim_table(results, lambda hashes: {h: np.zeros(0, bool) for h in hashes}).iloc[0]
    assert empty.test_images == 0 and "too few images" in empty.note and empty.verdict == "equivalent"


def test_holm_matches_statsmodels_and_controls_the_better_verdicts():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    for seed in range(60):  # a group whose "mean better" is significant alone but not among ten
        single = one(generate(mean_peak=81.0, noise=0.3, seed=seed))
        if single.verdict == "mean better" and single.p_beyond > 0.003:
            break
    else:
        pytest.fail("no seed gave a borderline 'mean better'")
    family = pd.concat([generate(mean_peak=81.0, noise=0.3, seed=seed, backbone=f"b{i}") for i in range(10)])
    table = claim_table(family)
    assert table["p_beyond_holm"].tolist() == pytest.approx([min(1.0, 10 * single.p_beyond)] * 10)
    assert (table["verdict"] == "inconclusive").all() and "Holm's correction across 10 groups" in table.iloc[0].note


def test_online_groups_are_flagged():
    row = one(generate(protocol="online"))
    assert row.seeds_vary == "initialisation" and "seeds vary only the initialisation" in row.note
    assert one(generate()).seeds_vary == "initialisation and data order"


@pytest.mark.parametrize("margin", [-0.5, 0.0, math.inf])
def test_a_margin_that_is_not_finite_and_positive_is_refused(margin):
    with pytest.raises(HarnessError, match="claim_margin .* finite positive"):
        claim_table(generate(margin=margin))


def test_claim_json_from_a_results_folder(tmp_path):
    """`harness claim --format json`: one object per group with both intervals, read from the store's predictions."""
    import json

    from results_factory import make_row

    from harness.cli import main
    from harness.results import store

    results = generate(noise=0.05)
    store.write_trial(tmp_path, [make_row(**r) for r in results.to_dict("records")], [],
                      [store.prediction_record(h, np.where(_predictions(400, 0.1)[a == "mean"], 1, 0), np.ones(400))
                       for h, a in zip(results["config_hash"], results["aggregator"])])
    code = subprocess.run([sys.executable, "-m", "harness.cli", "claim", "--results-dir", str(tmp_path), "--format",
                           "json"], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    (record,) = json.loads(code.stdout)
    for field in ("backbone", "dataset", "protocol", "grid", "n_seeds", "test_images", "difference", "ci_low",
                  "ci_high", "seed_ci_low", "seed_ci_high", "p_tost", "verdict", "untuned_difference",
                  "untuned_verdict", "failed_seeds_at_cls_lr"):
        assert field in record
    assert record["grid"] == "claim" and record["n_seeds"] == 5 and record["test_images"] == 400
    assert record["ci_high"] - record["ci_low"] > record["seed_ci_high"] - record["seed_ci_low"]
    assert record == claim_records(claim_table(results, lambda h: store.read_correct(tmp_path, h)))[0]
    assert main(["claim", "--results-dir", str(tmp_path / "none"), "--format", "json"]) == 2
