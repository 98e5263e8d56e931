"""The claim's statistics: paired differences over seeds, with the test set's own sampling error added.

Kept apart from the claim's tables (`harness.report.claim`) and its rendering (`harness.report.claim_pages`) so each
formula is tested on numbers alone. No pandas, torch or Ray.

Two sources of uncertainty. Seeds vary a head's initialisation and data order on a fixed test set: their spread
gives the seed variance of the mean difference, sd^2 / S. The test set is one sample of N images: with e_i the
per-image difference of correctness (mean head minus cls head, -1, 0 or +1) averaged over seeds, its sampling
variance is var(e) / N (in points, times 100^2): the McNemar-style term of a paired comparison, about 0.3 points of
standard error for two heads that disagree on 10% of CIFAR-100's 10,000 images. The full standard error adds both;
its degrees of freedom follow Welch-Satterthwaite. The seed-only interval is kept beside it.
The t and noncentral-t formulas are written out on SciPy's special functions: `scipy.stats`' per-call overhead was
most of a leaderboard regeneration. Tests check them against statsmodels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 100_000  # the power search stops here: beyond it, "seeds needed" is reported as unknown (None)
EQUIVALENT, MEAN_BETTER, CLS_BETTER = "equivalent", "mean better", "cls better"
INCONCLUSIVE, NARROW, NOT_APPLICABLE = "inconclusive", "grid too narrow", "not applicable"


@dataclass(frozen=True)
class Spread:
    """The mean of paired differences, its standard error and degrees of freedom (se 0: no spread at all)."""

    mean: float
    se: float
    df: float

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        if self.se == 0.0:
            return self.mean, self.mean
        half = float(special.stdtrit(self.df, 0.5 + level / 2)) * self.se
        return self.mean - half, self.mean + half

    def p_tost(self, margin: float) -> float:
        """p-value of the two one-sided tests that the mean lies inside (-margin, +margin)."""
        if self.se == 0.0:  # the decision is exact (the t statistic would divide by zero)
            return 0.0 if abs(self.mean) < margin else 1.0
        lower = special.stdtr(self.df, -(self.mean + margin) / self.se)  # H0: mean <= -margin
        upper = special.stdtr(self.df, (self.mean - margin) / self.se)  # H0: mean >= +margin
        return float(max(lower, upper))

    def p_beyond(self, margin: float) -> float:
        """One-sided p-value that the mean lies beyond the margin on its own side (the "better" test)."""
        if self.se == 0.0:
            return 0.0 if abs(self.mean) > margin else 1.0
        return float(special.stdtr(self.df, -(abs(self.mean) - margin) / self.se))


def seed_spread(d: np.ndarray) -> Spread:
    """Paired t over seeds (n >= 2): mean of d, sd / sqrt(n), n - 1 degrees of freedom."""
    d = np.asarray(d, dtype=float)
    se = 0.0 if np.ptp(d) == 0.0 else math.sqrt(float(d.var(ddof=1)) / len(d))
    return Spread(float(d.mean()), se, len(d) - 1)


def sampling_variance(per_image: np.ndarray) -> float:
    """Sampling variance (points^2) of a mean accuracy difference from its (N,) per-image differences of
    correctness (each in [-1, 1], averaged over seeds): 100^2 var(e) / N, N >= 2."""
    e = np.asarray(per_image, dtype=float)
    return 1e4 * float(e.var(ddof=1)) / len(e)


def full_spread(d: np.ndarray, test_var: float, test_images: int) -> Spread:
    """Seed variance plus the test set's (`sampling_variance`), Welch-Satterthwaite degrees of freedom."""
    seeds = seed_spread(d)
    a, b = seeds.se ** 2, test_var
    if a + b == 0.0:
        return Spread(seeds.mean, 0.0, seeds.df)
    df = (a + b) ** 2 / (a * a / seeds.df + b * b / (test_images - 1))
    return Spread(seeds.mean, math.sqrt(a + b), df)


def _power(noncentrality: float, df: float, alpha: float) -> float:
    """Power of a one-sided t-test at level alpha for a noncentrality parameter (noncentral t)."""
    critical = -special.stdtrit(df, alpha)  # the t quantile with alpha above it
    return 1.0 - float(special.nctdtr(df, noncentrality, critical))


def _smallest_n(power_at) -> int | None:
    """The smallest n >= 2 with power_at(n) >= POWER (power grows with n), or None beyond MAX_SEEDS."""
    if power_at(MAX_SEEDS) < POWER:
        return None
    low, high = 1, 2  # invariant: power_at(low) < POWER (or low == 1), power_at(high) >= POWER once found
    while power_at(high) < POWER:
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= POWER else (mid, high)
    return high


def seeds_needed(diff: float, sd: float, margin: float, test_var: float = 0.0) -> int | None:
    """Seeds for 80% power at the observed mean and sd of d (and the test set's fixed variance): TOST if
    |diff| < margin, else beyond-the-margin. None where no number of seeds gets there (the test set dominates)."""
    if not sd > 0.0 or abs(diff) == margin:
        return None

    def se(n: int) -> float:
        return math.sqrt(sd * sd / n + test_var)

    if abs(diff) < margin:
        lower, upper = margin + diff, margin - diff
        return _smallest_n(lambda n: _power(lower / se(n), n - 1, ALPHA) + _power(upper / se(n), n - 1, ALPHA) - 1)
    effect = abs(diff) - margin
    return _smallest_n(lambda n: _power(effect / se(n), n - 1, ALPHA / 2))


@dataclass(frozen=True)
class Comparison:
    """The paired test of d = mean - cls (top-1 points) for one group, on the full uncertainty where the test
    predictions are there (else on the seeds alone, `full` False)."""

    n: int
    diff: float  # mean of d
    ci_low: float  # 95% CI of the mean of d: seeds and test set (seeds alone without predictions)
    ci_high: float
    seed_ci_low: float  # 95% CI from the seeds alone (paired t)
    seed_ci_high: float
    p_tost: float  # TOST p-value for |d| < margin
    p_beyond: float  # one-sided p-value for |d| beyond the margin on its side, before the family correction
    verdict: str  # before the family correction of the "better" verdicts
    seeds_needed: int | None  # only for "inconclusive": seeds for 80% power at the observed mean and sd
    full: bool


def compare(d: np.ndarray, margin: float, test_var: float | None = None, test_images: int = 0) -> Comparison:
    """The verdict on paired differences d = mean - cls: equivalent when TOST rejects at ALPHA; mean / cls better
    when the one-sided beyond-the-margin test rejects at ALPHA / 2 (the whole 95% CI beyond the margin);
    inconclusive otherwise or with fewer than 2 seeds. `test_var` (None: no predictions) adds the test set."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    nan = math.nan
    if n < 2:
        return Comparison(n, float(d[0]) if n else nan, nan, nan, nan, nan, nan, nan, INCONCLUSIVE, None,
                          test_var is not None)
    seeds = seed_spread(d)
    spread = seeds if test_var is None else full_spread(d, test_var, test_images)
    (low, high), p, beyond = spread.ci(), spread.p_tost(margin), spread.p_beyond(margin)
    needed = None
    if p < ALPHA:
        verdict = EQUIVALENT
    elif beyond < ALPHA / 2:
        verdict = MEAN_BETTER if spread.mean > 0 else CLS_BETTER
    else:
        verdict = INCONCLUSIVE
        needed = seeds_needed(spread.mean, float(d.std(ddof=1)), margin, test_var or 0.0)
    return Comparison(n, spread.mean, low, high, *seeds.ci(), p, beyond, verdict, needed, test_var is not None)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control across the family, in input order)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
