"""The jobs a study defines (pure, no training)."""

import pytest
from helpers import smoke_dict

from bench.study import Study, StudyError, merge, study_jobs


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
        grid = dict(j.grid)
        assert (
            j.config.pooling.k_ratio == grid["pooling.k_ratio"] and j.config.loss.pce_weight == grid["loss.pce_weight"]
        )
        assert j.config.pooling.kind == ("max" if j.variant == "vit-pcm" else "topk")  # the variant's override
        assert j.config.train.epochs == 2  # from base
    assert len({j.config_hash for j in jobs}) == len(jobs)


def test_jobs_without_grid_and_with_a_search():
    jobs = study_jobs(make_study(seeds=[0, 1, 2]))
    assert [j.key for j in jobs] == [f"{v}|seed={s}" for v in ("vit-pcm", "tkp-pcl") for s in (0, 1, 2)]
    assert all(j.grid == {} for j in jobs)
    search = {"space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    assert study_jobs(make_study(search=search)) == []


def test_a_grid_axis_without_values_and_a_conflicting_override_are_errors():
    with pytest.raises(StudyError, match=r"grid.pooling.k_ratio: needs at least one value"):
        study_jobs(make_study(grid={"pooling.k_ratio": []}))
    with pytest.raises(StudyError, match=r"^variants.tkp-pcl.pooling.kind.x: 'kind' is a value, not a section$"):
        study_jobs(make_study(variants={"tkp-pcl": {"pooling.kind.x": 1}}))
    assert merge({"a": {"b": 1}}, {"a.c": 2, "d": {"e": 3}}) == {"a": {"b": 1, "c": 2}, "d": {"e": 3}}
