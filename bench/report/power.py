"""How many seeds a comparison needs: the power of the report's two-sided paired t-test.

For a comparison over ``n`` seed pairs whose differences have sample standard deviation ``sd``:
the smallest mean difference the test detects with :data:`POWER` at level :data:`ALPHA` with
``n`` pairs, and the number of pairs that would detect the observed difference with that power
(``statsmodels.stats.power.TTestPower``: a one-sample t-test on the differences).
"""

from __future__ import annotations

import math
import warnings
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


def power(n: int, diff: float, sd: float) -> Power | None:
    """The power analysis of a paired comparison; None when it cannot be made (fewer than 2
    pairs, or differences that do not vary)."""
    if n < 2 or not math.isfinite(sd) or sd <= 0 or not math.isfinite(diff):
        return None
    from statsmodels.stats.power import TTestPower

    solver = TTestPower()
    detectable = float(solver.solve_power(nobs=n, alpha=ALPHA, power=POWER, alternative="two-sided")) * sd
    needed = None
    effect = abs(diff) / sd
    if effect > 0:
        with warnings.catch_warnings():  # a tiny effect: the solver warns before giving a huge count
            warnings.simplefilter("ignore")
            nobs = float(solver.solve_power(effect_size=effect, alpha=ALPHA, power=POWER, alternative="two-sided"))
        if math.isfinite(nobs) and nobs <= MAX_SEEDS:
            needed = max(2, math.ceil(nobs))
    return Power(n, diff, sd, detectable, needed)


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
