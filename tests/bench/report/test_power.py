"""The power of the report's paired t-test, checked against the noncentral t distribution."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from bench.report.power import ALPHA, MAX_SEEDS, POWER, clause, power
from bench.report.power import t_power as product_t_power


def t_power(effect: float, n: int) -> float:
    """Power of the two-sided one-sample t-test on n differences at standardised effect ``effect``:
    P(|T| > t_crit) with T ~ noncentral t(df = n - 1, nc = effect * sqrt(n))."""
    df, nc = n - 1, effect * math.sqrt(n)
    crit = stats.t.ppf(1 - ALPHA / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def test_the_power_function_is_the_noncentral_t_and_near_one_where_scipy_gives_nan():
    for effect, n in [(0.5, 3), (2.0, 5), (0.3, 40)]:
        assert product_t_power(effect, n) == pytest.approx(t_power(effect, n), abs=1e-12)
    assert math.isnan(t_power(2.0, 100)) and product_t_power(2.0, 100) == pytest.approx(1.0)


def test_detectable_difference_has_the_stated_power_at_the_study_seeds():
    p = power(3, 0.227, 0.114)
    assert t_power(p.detectable / 0.114, 3) == pytest.approx(POWER, abs=1e-4)
    assert p.detectable == pytest.approx(0.372, abs=1e-3)  # 3.264 standard deviations at 3 pairs


def test_seeds_needed_is_the_smallest_count_with_the_stated_power():
    p = power(3, 0.227, 0.114)
    effect = 0.227 / 0.114
    assert p.needed == 5 and t_power(effect, 5) >= POWER > t_power(effect, 4)
    assert power(3, -0.227, 0.114).needed == 5  # the sign does not matter
    assert power(3, 0.277, 0.131).needed == 5  # statsmodels' power() is NaN here at 100 seeds: not used
    big = power(3, 0.9, 0.1)  # 9 sd: 2 pairs have power 0.68, 3 pairs 1.00
    assert big.needed == 3 and t_power(9.0, 2) < POWER and "(the study has enough)" in clause(3, 0.9, 0.1)


@pytest.mark.parametrize("diff,sd", [(0.235, 0.013), (0.5, 0.01), (0.2, 0.1)])
def test_a_large_difference_is_settled_not_called_too_small(diff, sd):
    """Effects of 2 to 50 standard deviations: statsmodels' solver returns NaN for some (the
    search study's +23.5 points at sd 1.3 read "too small to settle" once); the count is found."""
    p = power(3, diff, sd)
    effect = diff / sd
    assert p.needed is not None and (p.needed == 2 or product_t_power(effect, p.needed - 1) < POWER)
    assert product_t_power(effect, p.needed) >= POWER
    assert "too small" not in clause(3, diff, sd)


def test_too_small_a_difference_and_degenerate_inputs_are_said_so():
    tiny = power(3, 0.001, 0.114)
    assert tiny.needed is None and t_power(0.001 / 0.114, MAX_SEEDS) < POWER
    assert f"more than {MAX_SEEDS}" in clause(3, 0.001, 0.114)
    assert power(1, 0.2, float("nan")) is None and "one seed pair" in clause(1, 0.2, float("nan"))
    assert power(3, 0.2, 0.0) is None and "do not vary" in clause(3, 0.2, 0.0)


def test_the_clause_quotes_the_numbers_in_points():
    text = clause(3, 0.227, 0.114)
    assert text == (
        "the paired differences vary with sd 11.4 points; with 3 seeds a paired t-test (α = 0.05) "
        "detects 37.2 points with 80% power; detecting the observed +22.7 points with 80% power takes 5 seeds"
    )
