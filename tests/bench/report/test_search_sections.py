"""Statistics of the report (the paired t-interval below 8 seeds) and the Search / Confirmation
sections of a search study, on hand-made runs and a real (in-memory) Optuna study."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest

from bench.report.build import claims
from bench.report.search_sections import (
    SearchInfo,
    TableBlock,
    confirmation_section,
    optimism_gap,
    search_only_study,
    search_section,
    stage_runs,
)
from bench.report.statistics import T_INTERVAL_BELOW, paired, summary

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom (tables: 4.303)


def runs(
    values: dict[str, list[float]], stage: str | None = None, confirm_of: dict[str, int] | None = None
) -> pd.DataFrame:
    """Finished runs: one row per (group, seed) with metrics.pseudo_miou."""
    rows = []
    for group, vals in values.items():
        for seed, v in enumerate(vals):
            row = {
                "group": group,
                "variant": group,
                "seed": seed,
                "state": "FINISHED",
                "metrics.pseudo_miou": v,
                "run_id": f"{group}-{seed}",
            }
            if stage:
                row["tags.bench.stage"] = stage
                row["tags.bench.confirm_of"] = str(confirm_of[group]) if confirm_of and group in confirm_of else None
            rows.append(row)
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def test_paired_t_interval_on_hand_numbers():
    # differences 0.02, 0.05, 0.08: mean 0.05, sd 0.03, se 0.03 / sqrt(3)
    df = runs({"base": [0.50, 0.40, 0.30], "new": [0.52, 0.45, 0.38]})
    c = paired(df, "new", "base", "pseudo_miou")
    half = T_975_DF2 * 0.03 / math.sqrt(3)
    assert c.ci_kind == "t" and c.n == 3
    assert c.diff == pytest.approx(0.05)
    assert (c.ci_low, c.ci_high) == (pytest.approx(0.05 - half), pytest.approx(0.05 + half))
    t = 0.05 / (0.03 / math.sqrt(3))  # 2.887 on 2 df: two-sided p = 0.1019 (t tables)
    assert c.p == pytest.approx(0.10194, abs=1e-4) and t == pytest.approx(2.88675, abs=1e-4)
    assert c.ci_low < 0 < c.ci_high  # agrees with p > 0.05, where a percentile bootstrap would not
    s = summary(df, "base")
    assert s.loc["new", "pseudo_miou_ci_kind"] == "t"
    [sentence] = claims(s, "base")
    assert "95% paired t-interval [-2.5, +12.5]" in sentence and "p = 0.1" in sentence


@pytest.mark.parametrize("n", [2, 4, 7])
def test_t_interval_excludes_zero_exactly_when_p_is_below_005(n):
    rng = np.random.default_rng(n)
    for _ in range(30):
        base = rng.uniform(0.3, 0.6, n)
        df = runs({"base": list(base), "new": list(base + rng.normal(0.02, 0.03, n))})
        c = paired(df, "new", "base", "pseudo_miou")
        assert c.ci_kind == "t"
        assert (c.ci_low > 0 or c.ci_high < 0) == (c.p < 0.05)


def test_bootstrap_from_eight_pairs_on():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.6, T_INTERVAL_BELOW)
    d = rng.normal(0.02, 0.01, T_INTERVAL_BELOW)
    c = paired(runs({"base": list(base), "new": list(base + d)}), "new", "base", "pseudo_miou")
    assert c.ci_kind == "bootstrap" and c.n == 8
    assert d.min() <= c.ci_low < d.mean() < c.ci_high <= d.max()
    one = paired(runs({"base": [0.5], "new": [0.6]}), "new", "base", "pseudo_miou")
    assert one.ci_kind is None and math.isnan(one.ci_low) and math.isnan(one.p)


# --- search / confirmation sections ----------------------------------------------------------


def optuna_study(values: list[float | None]) -> optuna.Study:
    """A real in-memory study: search trials 0..n-1 (None = pruned), then two confirm trials."""
    study = optuna.create_study(direction="maximize")
    dist = {"pooling.k_ratio": optuna.distributions.FloatDistribution(0.01, 1.0)}
    for i, v in enumerate(values):
        state = optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.PRUNED
        study.add_trial(
            optuna.trial.create_trial(
                params={"pooling.k_ratio": 0.1 * (i + 1)},
                distributions=dist,
                value=v,
                state=state,
                user_attrs={"job_key": f"search|trial={i}"},
            )
        )
    for seed, v in ((10, 0.9), (11, 0.95)):  # report-split values: never in the Search section
        study.add_trial(optuna.trial.create_trial(value=v, user_attrs={"job_key": f"confirm|vit-pcm|seed={seed}"}))
    return study


def search_runs(values: list[float | None]) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        rows.append(
            {
                "group": "tkp-pcl",
                "variant": "tkp-pcl",
                "seed": 0,
                "state": "FINISHED" if v is not None else "PRUNED",
                "tags.bench.stage": "search",
                "tags.bench.trial": str(i),
                "tags.bench.confirm_of": None,
                "metrics.tune_pseudo_miou_seed0": None if v is None else v - 0.01,
                "metrics.tune_pseudo_miou_seed1": None if v is None else v + 0.01,
            }
        )
    return pd.DataFrame(rows)


def test_search_section_lists_search_trials_on_the_tune_split_only():
    values = [0.40, 0.62, None, 0.55]
    ostudy = optuna_study(values)
    confirm = runs({"tkp-pcl-top1": [0.50, 0.54, 0.52], "vit-pcm": [0.45, 0.47, 0.46]}, "confirm", {"tkp-pcl-top1": 1})
    df = pd.concat([search_runs(values), confirm], ignore_index=True)
    sec = search_section(df, ostudy, SearchInfo(seeds=[0, 1], n_tune=64))
    assert sec.title == "Search"
    text = sec.blocks[0]
    assert text.startswith("4 search trials (3 complete, 1 pruned)") and "tune split (64 images)" in text
    table = sec.blocks[1]
    assert isinstance(table, TableBlock) and "tune split" in table.caption
    assert list(table.data.index) == [1, 3, 0]  # best first; pruned and confirmation trials left out
    assert table.data.loc[1, "value"] == 0.62 and table.data.loc[1, "seed 1"] == pytest.approx(0.63)
    assert table.data.loc[1, "confirmed"] == "tkp-pcl-top1" and table.data.loc[3, "confirmed"] == ""
    assert (
        "pseudo mIoU (tune split)" in table.display.columns
        and table.display.loc[1, "pseudo mIoU (tune split)"] == "62.0"
    )
    only = search_only_study(ostudy)
    assert len(only.trials) == 4 and only.best_value == 0.62


def test_optimism_gap_is_the_tune_value_minus_the_confirmed_mean():
    ostudy = optuna_study([0.40, 0.62, None, 0.55])
    confirm = runs(
        {"tkp-pcl-top1": [0.50, 0.54, 0.52], "tkp-pcl-top2": [0.50, 0.50, 0.56], "vit-pcm": [0.45, 0.47, 0.46]},
        "confirm",
        {"tkp-pcl-top1": 1, "tkp-pcl-top2": 3},
    )
    df = pd.concat([search_runs([0.40, 0.62, None, 0.55]), confirm], ignore_index=True)
    gap = optimism_gap(df, ostudy, "pseudo_miou", "maximize")
    assert list(gap.index) == ["tkp-pcl-top1", "tkp-pcl-top2"]  # the baseline has no tune value
    top1 = gap.loc["tkp-pcl-top1"]
    assert (top1["trial"], top1["seeds"]) == (1, 3)
    assert (
        top1["tune"] == 0.62
        and top1["report_mean"] == pytest.approx(0.52)
        and top1["report_std"] == pytest.approx(0.02)
    )
    assert top1["gap"] == pytest.approx(0.10)
    assert gap.loc["tkp-pcl-top2", "gap"] == pytest.approx(0.55 - 0.52)
    assert optimism_gap(df, ostudy, "pseudo_miou", "minimize").loc["tkp-pcl-top1", "gap"] == pytest.approx(-0.10)
    sec = confirmation_section(df, ostudy, SearchInfo(baseline="vit-pcm", confirm_seeds=[0, 1, 2]))
    assert sec.title == "Confirmation" and "baseline vit-pcm" in sec.blocks[0]
    table = sec.blocks[1]
    assert table.name == "optimism_gap" and table.display.loc["tkp-pcl-top1", "optimism gap"] == "+10.0"
    assert table.display.loc["tkp-pcl-top1", "pseudo mIoU, report split (confirmed)"] == "52.0 ± 2.0"
    assert sec.blocks[2] == (
        "tkp-pcl-top1 (search trial 1): pseudo mIoU 62.0 on the tune split, 52.0 ± 2.0 on the report "
        "split over 3 seeds: an optimism gap of +10.0 points."
    )
    assert len(stage_runs(df, "confirm")) == 9 and len(stage_runs(df, "search")) == 4


def test_confirmation_section_before_any_confirmation_run():
    ostudy = optuna_study([0.4])
    sec = confirmation_section(search_runs([0.4]), ostudy, SearchInfo(baseline="vit-pcm", confirm_seeds=[0, 1]))
    assert sec.blocks[-1] == "No confirmation run has finished yet."
    assert stage_runs(runs({"a": [0.1]}), "confirm").empty  # no stage tag (a grid study): nothing


def test_search_without_a_tune_split_is_labelled_optimistic():
    ostudy = optuna_study([0.40, 0.62])
    sec = search_section(search_runs([0.40, 0.62]), ostudy, SearchInfo(tuned=False))
    assert "No search.tune" in sec.blocks[0] and sec.blocks[1].caption.endswith(
        "optimistic: scored on the images it was chosen on"
    )
    assert "pseudo mIoU (pseudo-label split)" in sec.blocks[1].display.columns and "seed 0" not in sec.blocks[1].data
