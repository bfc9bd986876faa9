"""The paired statistics of the report on hand-made numbers (checked against scipy and against
arithmetic by hand)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.statistics import paired


def runs(values: dict[str, list[float]]) -> pd.DataFrame:
    """Finished runs as ``load_runs`` gives them: one row per (group, seed)."""
    rows = [
        {"group": g, "variant": g, "seed": s, "state": "FINISHED", "metrics.pseudo_miou": v}
        for g, vs in values.items()
        for s, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_paired_difference_and_t_test_on_hand_numbers():
    base, new = [0.50, 0.60, 0.55, 0.40], [0.53, 0.61, 0.60, 0.42]  # differences .03 .01 .05 .02
    c = paired(runs({"vit-pcm": base, "tkp": new}), "tkp", "vit-pcm", "pseudo_miou")
    assert c.n == 4 and c.diff == pytest.approx(0.0275)
    # by hand: mean .0275, sample sd of (.03, .01, .05, .02) = .017078, t = .0275 / (.017078 / 2) = 3.2205
    d = np.array([0.03, 0.01, 0.05, 0.02])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(4))
    assert t == pytest.approx(3.2205, abs=1e-3)
    assert c.p == pytest.approx(2 * stats.t.sf(t, df=3))
    assert c.p == pytest.approx(stats.ttest_rel(new, base).pvalue) and 0.04 < c.p < 0.05
    # 4 pairs: the paired t-interval, mean -+ t(.975, 3) * sd / 2, t(.975, 3) = 3.1824 (tables); p < .05: 0 is out
    half = 3.182446305284263 * d.std(ddof=1) / 2
    assert c.ci_kind == "t" and (c.ci_low, c.ci_high) == (pytest.approx(0.0275 - half), pytest.approx(0.0275 + half))
    assert 0 < c.ci_low < c.diff < c.ci_high


def test_paired_uses_shared_seeds_only_and_needs_two_for_a_p_value():
    df = runs({"vit-pcm": [0.5, 0.6, 0.7], "tkp": [0.6, 0.65]})  # seed 2 of tkp is missing
    c = paired(df, "tkp", "vit-pcm", "pseudo_miou")
    assert c.n == 2 and c.diff == pytest.approx(0.075) and c.ci_kind == "t"
    half = 12.706204736174698 * np.std([0.1, 0.05], ddof=1) / np.sqrt(2)  # t(.975, 1) = 12.706 (tables)
    assert (c.ci_low, c.ci_high) == (pytest.approx(0.075 - half), pytest.approx(0.075 + half))
    assert c.p == pytest.approx(stats.ttest_rel([0.6, 0.65], [0.5, 0.6]).pvalue)
    one = paired(runs({"vit-pcm": [0.5], "tkp": [0.7]}), "tkp", "vit-pcm", "pseudo_miou")
    assert one.n == 1 and one.diff == pytest.approx(0.2) and np.isnan(one.p)
    assert paired(df, "tkp", "vit-pcm", "seg_miou") is None  # metric not logged


def test_paired_carries_the_sample_sd_of_the_differences():
    from bench.report.statistics import summary

    # differences .03 .01 .05 .02: mean .0275, squared deviations .00000625 .00030625 .00050625
    # .00005625, sum .000875, / 3 = .00029167, sd .017078
    c = paired(
        runs({"vit-pcm": [0.50, 0.60, 0.55, 0.40], "tkp": [0.53, 0.61, 0.60, 0.42]}), "tkp", "vit-pcm", "pseudo_miou"
    )
    assert c.sd == pytest.approx(0.017078, abs=1e-6)
    two = paired(runs({"vit-pcm": [0.5, 0.6, 0.7], "tkp": [0.6, 0.65]}), "tkp", "vit-pcm", "pseudo_miou")
    assert two.sd == pytest.approx(0.0353553, abs=1e-6)  # (.1, .05): |.1 - .05| / sqrt(2)
    one = paired(runs({"vit-pcm": [0.5], "tkp": [0.7]}), "tkp", "vit-pcm", "pseudo_miou")
    assert np.isnan(one.sd)
    s = summary(runs({"vit-pcm": [0.50, 0.60, 0.55, 0.40], "tkp": [0.53, 0.61, 0.60, 0.42]}), "vit-pcm")
    assert s.loc["tkp", "pseudo_miou_diff_sd"] == pytest.approx(0.017078, abs=1e-6)
