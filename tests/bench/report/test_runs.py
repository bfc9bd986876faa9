"""Reading a study's runs back from a real SQLite MLflow store, as the report does."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.records import Tag, grid_tag
from bench.report import ReportError
from bench.report.runs import finished, load_runs, run_grid_points, status_table
from bench.stores import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Six trial runs of study ``r`` under one parent: two variants x a grid axis x seeds, one
    failed, one pruned, one still running; and a parent run that must not be read as a trial."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('runs')}/mlflow.db"
    tracker = Tracker(uri, "r")
    parent = tracker.open()
    rows = [
        ("vit-pcm", 0, 0.1, "FINISHED", 0.5),
        ("vit-pcm", 1, 0.1, "FINISHED", 0.7),
        ("tkp-pcl", 0, 0.1, "FINISHED", 0.8),
        ("tkp-pcl", 1, 0.1, "FAILED", None),
        ("tkp-pcl", 0, 0.3, "KILLED", None),
        ("tkp-pcl", 1, 0.3, "RUNNING", None),
    ]
    for variant, seed, k, status, value in rows:
        tags = {Tag.VARIANT: variant, Tag.SEED: seed, grid_tag("pooling.k_ratio"): k}
        if status == "KILLED":
            tags[Tag.STATE] = "PRUNED"
        run = tracker.start_trial(parent, f"{variant} {seed}", tags, {"pooling.k_ratio": k})
        if value is not None:
            tracker.log_metrics(run, {"pseudo_miou": value})
        if status != "RUNNING":
            tracker.end(run, status)
    return uri


def test_runs_carry_variant_seed_group_state_and_grid_axes(store):
    df = load_runs(store, "r")
    assert len(df) == 6 and df.attrs["grid_axes"] == ["pooling.k_ratio"]
    assert list(df["variant"]) == ["vit-pcm"] * 2 + ["tkp-pcl"] * 4
    assert list(df["seed"]) == [0, 1, 0, 1, 0, 1]
    assert list(df["state"]) == ["FINISHED", "FINISHED", "FINISHED", "FAILED", "PRUNED", "RUNNING"]
    assert list(df["group"]) == ["vit-pcm k_ratio=0.1"] * 2 + ["tkp-pcl k_ratio=0.1"] * 2 + ["tkp-pcl k_ratio=0.3"] * 2
    assert list(df["grid.pooling.k_ratio"]) == ["0.1"] * 4 + ["0.3"] * 2
    assert list(finished(df)["metrics.pseudo_miou"]) == [0.5, 0.7, 0.8]


def test_status_table_counts_each_state_and_the_finished_seeds(store):
    t = status_table(load_runs(store, "r"), expected_seeds=2)
    assert t.loc["tkp-pcl k_ratio=0.1", ["FINISHED", "FAILED", "seeds", "expected"]].tolist() == [1, 1, 1, 2]
    assert t.loc["tkp-pcl k_ratio=0.3", ["PRUNED", "RUNNING", "seeds"]].tolist() == [1, 1, 0]
    assert t.loc["vit-pcm k_ratio=0.1", "seeds"] == 2


def test_an_unknown_study_or_one_without_trials_is_a_report_error(store):
    with pytest.raises(ReportError, match="no study 'nope' in the MLflow store"):
        load_runs(store, "nope")
    Tracker(store, "empty").open()
    with pytest.raises(ReportError, match="study 'empty' has no trial runs"):
        load_runs(store, "empty")


def test_grid_points_are_read_from_the_run_tags_not_the_job_key():
    runs = pd.DataFrame(
        {
            "tags.bench.job_key": [
                "tkp|pooling.k_ratio=0.1|seed=0",
                "tkp|pooling.k_ratio=0.3|seed=0",
                "vit-pcm|seed=0",
            ],
            "tags.bench.grid.pooling.k_ratio": ["0.1", "0.3", None],
            "tags.bench.grid.loss.eq_form": ["flip", "vitpcm", None],
        }
    )
    assert list(run_grid_points(runs)) == [
        {"pooling.k_ratio": "0.1", "loss.eq_form": "flip"},
        {"pooling.k_ratio": "0.3", "loss.eq_form": "vitpcm"},
        {},
    ]  # the key's own text is never parsed: its second run says eq_form nowhere
    assert list(run_grid_points(pd.DataFrame({"tags.bench.job_key": ["a|seed=0"]}))) == [{}]
