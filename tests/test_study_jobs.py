"""The harness's pure logic, no training: the jobs a study defines, and the paired statistics
of the report on hand-made numbers (checked against scipy and against arithmetic by hand)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.study import Study, StudyError, merge, study_jobs
from helpers import smoke_dict


def make_study(**changes) -> Study:
    d = smoke_dict()
    d.update(changes)
    return Study.model_validate(d)


def test_jobs_are_variants_x_grid_x_seeds_in_a_stable_order():
    study = make_study(seeds=[3, 1], grid={"pooling.k_ratio": [0.1, 0.5], "loss.pce_weight": [0.0, 0.2, 0.4]})
    jobs = study_jobs(study)
    assert len(jobs) == 2 * 2 * 3 * 2
    assert [j.key for j in jobs] == [j.key for j in study_jobs(study)]  # same order every time
    assert len({j.key for j in jobs}) == len(jobs)
    assert jobs[0].key == "vit-pcm|pooling.k_ratio=0.1|loss.pce_weight=0.0|seed=3"
    assert jobs[1].key == "vit-pcm|pooling.k_ratio=0.1|loss.pce_weight=0.0|seed=1"
    assert jobs[-1].key == "tkp-pcl|pooling.k_ratio=0.5|loss.pce_weight=0.4|seed=1"
    for j in jobs:
        assert j.config.train.seed == j.seed  # the seed is applied to the configuration
        grid = dict(j.grid_point)
        assert j.config.pooling.k_ratio == grid["pooling.k_ratio"] and j.config.loss.pce_weight == grid["loss.pce_weight"]
        assert j.config.pooling.kind == ("max" if j.variant == "vit-pcm" else "topk")  # the variant's override
        assert j.config.train.epochs == 2  # from base
    assert len({j.config_hash for j in jobs}) == len(jobs)


def test_jobs_without_grid_and_with_a_search():
    jobs = study_jobs(make_study(seeds=[0, 1, 2]))
    assert [j.key for j in jobs] == [f"{v}|seed={s}" for v in ("vit-pcm", "tkp-pcl") for s in (0, 1, 2)]
    assert all(j.grid_point == () for j in jobs)
    search = {"space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    assert study_jobs(make_study(search=search)) == []


def test_a_grid_axis_without_values_and_a_conflicting_override_are_errors():
    with pytest.raises(StudyError, match=r"grid.pooling.k_ratio: needs at least one value"):
        study_jobs(make_study(grid={"pooling.k_ratio": []}))
    with pytest.raises(StudyError, match=r"^variants.tkp-pcl.pooling.kind.x: 'kind' is a value, not a section$"):
        study_jobs(make_study(variants={"tkp-pcl": {"pooling.kind.x": 1}}))
    assert merge({"a": {"b": 1}}, {"a.c": 2, "d": {"e": 3}}) == {"a": {"b": 1, "c": 2}, "d": {"e": 3}}


def runs(values: dict[str, list[float]]) -> pd.DataFrame:
    """Finished runs as ``load_runs`` gives them: one row per (group, seed)."""
    rows = [{"group": g, "variant": g, "seed": s, "state": "FINISHED", "metrics.pseudo_miou": v}
            for g, vs in values.items() for s, v in enumerate(vs)]  # fmt: skip
    return pd.DataFrame(rows)


def test_paired_difference_and_t_test_on_hand_numbers():
    from bench.report_data import paired

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
    from bench.report_data import paired

    df = runs({"vit-pcm": [0.5, 0.6, 0.7], "tkp": [0.6, 0.65]})  # seed 2 of tkp is missing
    c = paired(df, "tkp", "vit-pcm", "pseudo_miou")
    assert c.n == 2 and c.diff == pytest.approx(0.075) and c.ci_kind == "t"
    half = 12.706204736174698 * np.std([0.1, 0.05], ddof=1) / np.sqrt(2)  # t(.975, 1) = 12.706 (tables)
    assert (c.ci_low, c.ci_high) == (pytest.approx(0.075 - half), pytest.approx(0.075 + half))
    assert c.p == pytest.approx(stats.ttest_rel([0.6, 0.65], [0.5, 0.6]).pvalue)
    one = paired(runs({"vit-pcm": [0.5], "tkp": [0.7]}), "tkp", "vit-pcm", "pseudo_miou")
    assert one.n == 1 and one.diff == pytest.approx(0.2) and np.isnan(one.p)
    assert paired(df, "tkp", "vit-pcm", "seg_miou") is None  # metric not logged


def test_grid_points_are_read_from_the_run_tags_not_the_job_key():
    import pandas as pd

    from bench.report_data import run_grid_points

    runs = pd.DataFrame({
        "tags.bench.job_key": ["tkp|pooling.k_ratio=0.1|seed=0", "tkp|pooling.k_ratio=0.3|seed=0", "vit-pcm|seed=0"],
        "tags.bench.grid.pooling.k_ratio": ["0.1", "0.3", None],
        "tags.bench.grid.loss.eq_form": ["flip", "vitpcm", None],
    })  # fmt: skip
    assert list(run_grid_points(runs)) == [
        {"pooling.k_ratio": "0.1", "loss.eq_form": "flip"}, {"pooling.k_ratio": "0.3", "loss.eq_form": "vitpcm"}, {},
    ]  # the key's own text is never parsed: its second run says eq_form nowhere
    assert list(run_grid_points(pd.DataFrame({"tags.bench.job_key": ["a|seed=0"]}))) == [{}]
