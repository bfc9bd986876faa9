"""How many seeds a comparison needs: the power of the report's two-sided paired t-test.

For a comparison over ``n`` seed pairs whose differences have sample standard deviation ``sd``:
the smallest mean difference the test detects with :data:`POWER` at level :data:`ALPHA` with
``n`` pairs, and the number of pairs that would detect the observed difference with that power
(:func:`t_power`: the one-sample t-test on the differences, from the noncentral t distribution;
statsmodels' ``TTestPower`` solver fails to converge, and returns NaN, for large effects, and
a NaN must not read as "too small to settle").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POWER = 0.8
ALPHA = 0.05
MAX_SEEDS = 100  # beyond this a difference is too small to settle by adding seeds


@dataclass(frozen=True)
class Power:
    """``detectable``: the smallest |mean difference| detected with :data:`POWER` at ``n`` pairs;
    ``needed``: pairs that detect ``diff`` with :data:`POWER` (None: more than :data:`MAX_SEEDS`)."""

    n: int
    diff: float
    sd: float
    detectable: float
    needed: int | None


def t_power(effect: float, n: int) -> float:
    """Power of the two-sided t-test on ``n`` paired differences at standardised effect
    ``effect`` (|mean| / sd): P(|T| > t_crit) with T ~ noncentral t(n - 1, effect * sqrt(n)).
    Where scipy's noncentral t gives NaN (power near 1), the normal approximation."""
    from scipy import stats

    df, nc = n - 1, effect * math.sqrt(n)
    crit = stats.t.ppf(1 - ALPHA / 2, df)
    p = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    if not math.isfinite(p):
        p = stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc)
    return float(p)


def seeds_needed(effect: float) -> int | None:
    """The fewest pairs (at least 2) whose test detects ``effect`` with :data:`POWER`; None
    beyond :data:`MAX_SEEDS`. Power grows with the pairs: a bisection."""
    if effect <= 0 or t_power(effect, MAX_SEEDS) < POWER:
        return None
    lo, hi = 1, MAX_SEEDS  # t_power(hi) >= POWER; lo is below every answer
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if t_power(effect, mid) >= POWER else (mid, hi)
    return max(2, hi)


def power(n: int, diff: float, sd: float) -> Power | None:
    """The power analysis of a paired comparison; None when it cannot be made (fewer than 2
    pairs, or differences that do not vary)."""
    if n < 2 or not math.isfinite(sd) or sd <= 0 or not math.isfinite(diff):
        return None
    from scipy.optimize import brentq

    detectable = brentq(lambda e: t_power(e, n) - POWER, 1e-9, 1e3) * sd
    return Power(n, diff, sd, detectable, seeds_needed(abs(diff) / sd))


def clause(n: int, diff: float, sd: float, scale: float = 100.0, unit: str = "points") -> str:
    """What the study's seeds can detect and what the observed difference needs, as one clause."""
    if n < 2:
        return "one seed pair, so nothing is known of the spread; run 2 or more seeds to judge power"
    p = power(n, diff, sd)
    if p is None:
        return f"the paired differences do not vary over {n} seeds (sd 0); a t-test and its power need spread"
    head = (
        f"the paired differences vary with sd {scale * sd:.1f} {unit}; with {n} seeds a paired t-test "
        f"(α = {ALPHA}) detects {scale * p.detectable:.1f} {unit} with {POWER:.0%} power"
    )
    if p.needed is None:
        return f"{head}; the observed {scale * diff:+.1f} {unit} is too small to settle with any sensible number of seeds (more than {MAX_SEEDS})"
    enough = " (the study has enough)" if p.needed <= n else ""
    return f"{head}; detecting the observed {scale * diff:+.1f} {unit} with {POWER:.0%} power takes {p.needed} seeds{enough}"
