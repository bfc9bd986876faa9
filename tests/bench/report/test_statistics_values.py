"""The report's numbers on hand-made runs tables: mean / std (ddof 1) / n per group, paired
differences (re-run seeds averaged, identical differences without a test), the paired
t-interval and p against ``scipy.stats``, the bootstrap interval for a fixed input and seed."""

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats

# the code under test, imported in one place (module paths move: edit only this line)
from bench.report.statistics import T_INTERVAL_BELOW, paired, summary


def table(rows):
    """Runs as ``load_runs`` gives them: (group, variant, seed, state, pseudo_miou, seg_miou)."""
    df = pd.DataFrame(rows, columns=["group", "variant", "seed", "state", "metrics.pseudo_miou", "metrics.seg_miou"])
    df["seed"] = df["seed"].astype("Int64")
    return df


def simple(values: dict[str, list[float]]):
    return table([(g, g, s, "FINISHED", v, np.nan) for g, vs in values.items() for s, v in enumerate(vs)])


ROWS = [
    ("base", "base", 0, "FINISHED", 0.50, 0.30),
    ("base", "base", 1, "FINISHED", 0.40, 0.20),
    ("base", "base", 2, "FINISHED", 0.60, np.nan),  # seg not logged for this run
    ("new", "new", 0, "FINISHED", 0.55, 0.36),
    ("new", "new", 1, "FINISHED", 0.47, 0.21),
    ("new", "new", 2, "FINISHED", 0.62, 0.33),
    ("new", "new", 3, "FAILED", 0.99, 0.99),  # not finished: left out everywhere
    ("solo", "solo", 0, "FINISHED", 0.70, 0.10),
    ("broken", "broken", 0, "FAILED", 0.80, 0.80),
]


def test_summary_mean_std_n_per_group_by_hand():
    s = summary(table(ROWS), None)
    assert list(s.index) == ["base", "new", "solo", "broken"]  # run order
    assert s.attrs["metrics"] == ["pseudo_miou", "seg_miou"]
    # base: mean (0.5 + 0.4 + 0.6) / 3 = 0.5; deviations 0, -0.1, 0.1 -> sd sqrt(0.02 / 2) = 0.1
    assert s.loc["base", "pseudo_miou_mean"] == pytest.approx(0.5)
    assert s.loc["base", "pseudo_miou_std"] == pytest.approx(0.1)
    assert s.loc["base", "n"] == 3 and s.loc["base", "variant"] == "base"
    # seg: the NaN is dropped, mean (0.3 + 0.2) / 2 = 0.25, sd sqrt(2 * 0.05^2 / 1) = 0.0707
    assert s.loc["base", "seg_miou_mean"] == pytest.approx(0.25)
    assert s.loc["base", "seg_miou_std"] == pytest.approx(math.sqrt(0.005))
    # new: the FAILED seed 3 (0.99) is not taken; sample sd (ddof 1) from the standard library
    assert s.loc["new", "pseudo_miou_mean"] == pytest.approx((0.55 + 0.47 + 0.62) / 3)
    assert s.loc["new", "pseudo_miou_std"] == pytest.approx(statistics.stdev([0.55, 0.47, 0.62]))
    assert s.loc["new", "seg_miou_mean"] == pytest.approx(0.3) and s.loc["new", "n"] == 3
    # one run: sd 0, not NaN
    assert s.loc["solo", "pseudo_miou_mean"] == pytest.approx(0.7) and s.loc["solo", "pseudo_miou_std"] == 0.0
    assert s.loc["solo", "n"] == 1
    # no finished run: no numbers
    assert s.loc["broken", "n"] == 0 and pd.isna(s.loc["broken", "variant"])
    assert np.isnan(s.loc["broken", "pseudo_miou_mean"]) and np.isnan(s.loc["broken", "pseudo_miou_std"])
    assert "pseudo_miou_diff" not in s.columns  # no baseline, no comparison


def test_summary_compares_each_group_to_the_baseline_at_its_grid_point():
    s = summary(table(ROWS), "base")
    # new - base per seed: 0.05, 0.07, 0.02 -> mean 0.14 / 3; 3 pairs -> the paired t-interval
    assert s.loc["new", "pseudo_miou_diff"] == pytest.approx(0.14 / 3)
    assert s.loc["new", "pseudo_miou_pairs"] == 3 and s.loc["new", "pseudo_miou_ci_kind"] == "t"
    assert s.loc["new", "pseudo_miou_p"] == pytest.approx(stats.ttest_rel([0.55, 0.47, 0.62], [0.5, 0.4, 0.6]).pvalue)
    # seg: seed 2 of base has no value -> 2 pairs (0.06, 0.01)
    assert s.loc["new", "seg_miou_diff"] == pytest.approx(0.035) and s.loc["new", "seg_miou_pairs"] == 2
    assert s.loc["solo", "pseudo_miou_diff"] == pytest.approx(0.2) and s.loc["solo", "pseudo_miou_pairs"] == 1
    assert np.isnan(s.loc["base", "pseudo_miou_diff"])  # the baseline is not compared to itself
    # an unknown baseline: no comparison
    assert "pseudo_miou_diff" not in summary(table(ROWS), "nope").columns


def test_summary_pairs_grid_points_with_the_same_point_of_the_baseline():
    rows = [
        ("base k=1", "base", 0, "FINISHED", 0.40, np.nan),
        ("base k=1", "base", 1, "FINISHED", 0.50, np.nan),
        ("base k=2", "base", 0, "FINISHED", 0.60, np.nan),
        ("base k=2", "base", 1, "FINISHED", 0.70, np.nan),
        ("new k=1", "new", 0, "FINISHED", 0.45, np.nan),
        ("new k=1", "new", 1, "FINISHED", 0.53, np.nan),
        ("new k=2", "new", 0, "FINISHED", 0.59, np.nan),
        ("new k=2", "new", 1, "FINISHED", 0.75, np.nan),
        ("new k=3", "new", 0, "FINISHED", 0.10, np.nan),  # no baseline at k=3
    ]
    s = summary(table(rows), "base")
    assert s.attrs["metrics"] == ["pseudo_miou"]  # seg never logged
    assert s.loc["new k=1", "pseudo_miou_diff"] == pytest.approx((0.05 + 0.03) / 2)
    assert s.loc["new k=2", "pseudo_miou_diff"] == pytest.approx((-0.01 + 0.05) / 2)
    assert np.isnan(s.loc["new k=3", "pseudo_miou_diff"])
    assert s.loc["new k=2", "pseudo_miou_mean"] == pytest.approx(0.67) and s.loc["new k=2", "n"] == 2
    assert s.loc["new k=2", "variant"] == "new"


def t_reference(d):
    """The paired t-interval and p from the t distribution: mean -+ t(.975, n-1) * sd / sqrt(n)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    se = d.std(ddof=1) / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    return d.mean() - half, d.mean() + half, 2 * stats.t.sf(abs(d.mean() / se), n - 1)


@pytest.mark.parametrize("n", [2, 3, 5, T_INTERVAL_BELOW - 1])
def test_t_interval_and_p_against_scipy(n):
    rng = np.random.default_rng(n)
    base = rng.uniform(0.3, 0.6, n)
    d = rng.normal(0.02, 0.03, n)
    c = paired(simple({"base": list(base), "new": list(base + d)}), "new", "base", "pseudo_miou")
    lo, hi, p = t_reference(d)
    assert c.n == n and c.ci_kind == "t" and c.group == "new" and c.metric == "pseudo_miou"
    assert c.diff == pytest.approx(d.mean())
    assert (c.ci_low, c.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert c.p == pytest.approx(p)


def test_the_interval_switches_to_the_bootstrap_at_8_pairs():
    assert T_INTERVAL_BELOW == 8


def test_bootstrap_interval_for_a_fixed_input_and_seed():
    base = [0.50, 0.52, 0.48, 0.55, 0.60, 0.45, 0.51, 0.49, 0.53]
    d = np.array([0.013, 0.031, -0.022, 0.047, 0.018, 0.041, 0.004, 0.059, 0.0117])
    c = paired(simple({"base": base, "new": list(np.add(base, d))}), "new", "base", "pseudo_miou")
    assert c.n == 9 and c.ci_kind == "bootstrap"
    assert c.diff == pytest.approx(0.2027 / 9)  # sum 0.2027
    # reference: scipy's percentile bootstrap of the mean, 5000 resamples, seed 0
    ref = stats.bootstrap((d,), np.mean, n_resamples=5000, method="percentile", random_state=0).confidence_interval
    assert (c.ci_low, c.ci_high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    # and by a second way: the 2.5% and 97.5% percentiles of 5000 resampled means lie near it
    rng = np.random.default_rng(1)
    means = d[rng.integers(0, 9, (5000, 9))].mean(1)
    assert c.ci_low == pytest.approx(np.percentile(means, 2.5), abs=0.004)
    assert c.ci_high == pytest.approx(np.percentile(means, 97.5), abs=0.004)
    assert c.p == pytest.approx(stats.ttest_rel(np.add(base, d), base).pvalue)
    # 8 pairs: bootstrap already
    assert (
        paired(simple({"base": base[:8], "new": list(np.add(base, d)[:8])}), "new", "base", "pseudo_miou").ci_kind
        == "bootstrap"
    )


def test_a_re_run_seed_is_averaged_before_pairing():
    rows = [
        ("base", "base", 0, "FINISHED", 0.50, np.nan),
        ("base", "base", 1, "FINISHED", 0.40, np.nan),
        ("base", "base", 2, "FINISHED", 0.60, np.nan),
        ("new", "new", 0, "FINISHED", 0.55, np.nan),
        ("new", "new", 1, "FINISHED", 0.45, np.nan),
        ("new", "new", 1, "FINISHED", 0.49, np.nan),  # seed 1 run twice: (0.45 + 0.49) / 2 = 0.47
        ("new", "new", 2, "FINISHED", 0.62, np.nan),
        ("base", "base", 3, "FINISHED", 0.9, np.nan),  # no partner: not paired
        ("new", "new", 4, "FAILED", 0.1, np.nan),
    ]
    c = paired(table(rows), "new", "base", "pseudo_miou")
    d = [0.05, 0.07, 0.02]
    assert c.n == 3 and c.diff == pytest.approx(sum(d) / 3)
    lo, hi, p = t_reference(d)
    assert (c.ci_low, c.ci_high, c.p) == (pytest.approx(lo), pytest.approx(hi), pytest.approx(p))


def test_identical_differences_have_no_test():
    # 0.55 - 0.5, 0.45 - 0.4, 0.65 - 0.6 differ only by rounding (about 1e-17): no spread, no test
    # (a t-test on the rounding would claim p = 1e-31)
    c = paired(simple({"base": [0.5, 0.4, 0.6], "new": [0.55, 0.45, 0.65]}), "new", "base", "pseudo_miou")
    assert c.n == 3 and c.diff == pytest.approx(0.05)
    assert c.ci_kind is None and np.isnan(c.p) and np.isnan(c.ci_low) and np.isnan(c.ci_high)
    same = paired(simple({"base": [0.5] * 9, "new": [0.6] * 9}), "new", "base", "pseudo_miou")
    assert same.n == 9 and same.ci_kind is None and np.isnan(same.p)


def test_paired_edges():
    df = simple({"base": [0.5, 0.6], "new": [0.7, 0.65]})
    two = paired(df, "new", "base", "pseudo_miou")
    assert two.n == 2 and two.ci_kind == "t" and two.diff == pytest.approx(0.125)
    lo, hi, p = t_reference([0.2, 0.05])
    assert (two.ci_low, two.ci_high, two.p) == (pytest.approx(lo), pytest.approx(hi), pytest.approx(p))
    # the sign: group - baseline
    assert paired(df, "base", "new", "pseudo_miou").diff == pytest.approx(-0.125)
    one = paired(simple({"base": [0.5], "new": [0.6]}), "new", "base", "pseudo_miou")
    assert one.n == 1 and one.diff == pytest.approx(0.1) and one.ci_kind is None and np.isnan(one.p)
    assert np.isnan(one.ci_low) and np.isnan(one.ci_high)
    assert paired(df, "new", "base", "seg_miou") is None  # logged by no run
    assert paired(df.drop(columns="metrics.seg_miou"), "new", "base", "seg_miou") is None  # not logged
    assert paired(df, "new", "nobody", "pseudo_miou") is None  # no shared seed
