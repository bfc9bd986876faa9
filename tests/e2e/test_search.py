"""Honest search end to end: a tiny search with a tune split, two seeds per search
trial and a confirmation stage, run by `bench run`, read back from MLflow, reported."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import child_runs, write_study
from mlflow import MlflowClient

from bench.cli import main

SEARCH = {
    "variant": "tkp-pcl",
    "sampler": "random",
    "n_trials": 3,
    "pruner": "none",
    "seed": 1,
    "seeds": [0, 1],
    "tune": {"count": 16},
    "space": {"pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5}},
}
CONFIRM = {"top_n": 1, "seeds": [0, 1], "baseline": "vit-pcm"}


@pytest.mark.slow
def test_search_with_confirmation_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = write_study(
        tmp_path / "s.yaml",
        {"base.segment.enabled": False, "base.pseudo.crf.enabled": False},
        search=SEARCH,
        confirm=CONFIRM,
    )
    assert main(["run", str(study), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "3 trials + 4 confirmation runs" in plan and "then: confirm" in plan and "tkp-pcl-top1 and vit-pcm" in plan
    assert main(["run", str(study)]) == 0
    trials, parents = child_runs("sqlite:///mlflow.db", "smoke")
    # tune and report ids: artifacts of the parent run, disjoint
    client = MlflowClient("sqlite:///mlflow.db")
    parent = parents.iloc[0]["run_id"]
    ids = {
        f: open(client.download_artifacts(parent, f, str(tmp_path))).read().split()
        for f in ("tune_ids.txt", "report_ids.txt")
    }
    assert len(ids["tune_ids.txt"]) == 16 and len(ids["report_ids.txt"]) == 96
    assert not set(ids["tune_ids.txt"]) & set(ids["report_ids.txt"])
    # search runs: both seeds' tune values, the objective their mean; no report-split metric
    search = trials[trials["tags.bench.stage"] == "search"]
    assert len(search) == 3 and (search["status"] == "FINISHED").all()
    assert set(search["tags.bench.seed"]) == {"0"} and set(search["tags.bench.search_seeds"]) == {"0,1"}
    mean = (search["metrics.tune_pseudo_miou_seed0"] + search["metrics.tune_pseudo_miou_seed1"]) / 2
    assert (search["metrics.tune_pseudo_miou"] - mean).abs().max() < 1e-9
    assert "metrics.pseudo_miou" not in search or search["metrics.pseudo_miou"].isna().all()
    # confirmation: the top trial and the baseline, each with the confirmation seeds, on the report split
    confirm = trials[trials["tags.bench.stage"] == "confirm"]
    best = search.loc[search["metrics.tune_pseudo_miou"].idxmax(), "tags.bench.trial"]
    top = confirm[confirm["tags.bench.variant"] == "tkp-pcl-top1"]
    base = confirm[confirm["tags.bench.variant"] == "vit-pcm"]
    assert (
        len(confirm) == 4
        and sorted(top["tags.bench.seed"]) == ["0", "1"]
        and sorted(base["tags.bench.seed"]) == ["0", "1"]
    )
    assert set(top["tags.bench.confirm_of"]) == {best} and base["tags.bench.confirm_of"].isna().all()
    assert confirm["metrics.pseudo_miou"].notna().all() and (confirm["status"] == "FINISHED").all()
    # each run names the splits it read: a search trial scores the tune stream, a confirmation the report one
    assert set(search["tags.bench.split.pseudo"]) == {"synthetic-tune"} and set(
        search["tags.bench.split.pseudo_images"]
    ) == {"16"}
    assert set(confirm["tags.bench.split.pseudo"]) == {"synthetic-train"} and set(
        confirm["tags.bench.split.pseudo_images"]
    ) == {"96"}
    assert set(trials["tags.bench.split.train"]) == {"synthetic-train+tune"}
    k_best = search.loc[search["tags.bench.trial"] == best, "params.pooling.k_ratio"].iloc[0]
    assert set(top["params.pooling.k_ratio"]) == {k_best}
    # the report: both sections; the main table holds the confirmation runs only
    assert main(["report", str(study)]) == 0
    out = tmp_path / "reports" / "smoke"
    md = (out / "report.md").read_text()
    assert "## Search" in md and "## Confirmation" in md and "tune split" in md
    gap = pd.read_csv(out / "tables" / "optimism_gap.csv", index_col=0)
    assert list(gap.index) == ["tkp-pcl-top1"] and gap.loc["tkp-pcl-top1", "seeds"] == 2
    main_table = pd.read_csv(out / "tables" / "main.csv")
    assert sorted(main_table["group"]) == ["tkp-pcl-top1", "vit-pcm"]
    assert len(pd.read_csv(out / "tables" / "best_trials.csv")) == 3
    # run again: nothing is repeated; another tune split under the same name is refused
    assert main(["run", str(study)]) == 0
    assert len(child_runs("sqlite:///mlflow.db", "smoke")[0]) == 7
    capsys.readouterr()
    changed = write_study(
        tmp_path / "s.yaml",
        {"base.segment.enabled": False, "base.pseudo.crf.enabled": False},
        search=SEARCH | {"tune": {"count": 8}},
        confirm=CONFIRM,
    )
    assert main(["run", str(changed)]) == 2
    assert 'search.tune: {"count": 8} here, {"count": 16} in the study\'s trial 0' in capsys.readouterr().err


def test_tune_split_overlapping_the_report_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, voc_root
):
    root, _ = voc_root
    monkeypatch.chdir(tmp_path)
    data = {
        "kind": "voc",
        "root": str(root),
        "train_split": "train_aug",
        "pseudo_split": "train",
        "val_split": "val",
        "loader_workers": 0,
    }
    study = write_study(tmp_path / "s.yaml", search=SEARCH | {"tune": {"split": "train"}}, confirm=CONFIRM, data=data)
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and f"{study}: search.tune: 3 tune image(s) are also in the pseudo-label (report) split" in err[0]
    ), err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".bench").exists()
