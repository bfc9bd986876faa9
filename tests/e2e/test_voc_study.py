"""A whole study on the tiny VOC-layout fixture (real VOC image included): loader, stage 1,
pseudo labels with CRF at the images' own sizes, stage 2 on train_aug's pseudo labels, MLflow."""

import pytest
from conftest import write_voc_fixture
from helpers import child_runs, write_study

from bench.cli import main

pytestmark = pytest.mark.slow


def test_bench_run_on_a_voc_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_voc_fixture(tmp_path / "VOC2012", n_synthetic=5)
    study = write_study(
        tmp_path / "voc.yaml",
        {"base.train.epochs": 1, "base.train.batch_size": 4, "base.segment.epochs": 1},
        data={
            "kind": "voc",
            "root": str(tmp_path / "VOC2012"),
            "train_split": "train_aug",
            "pseudo_split": "train",
            "val_split": "val",
            "loader_workers": 0,
        },
        variants={"tkp-pcl": {}},
        name="voc_tiny",
    )
    assert main(["run", str(study)]) == 0
    children, _ = child_runs("sqlite:///mlflow.db", "voc_tiny")
    run = children.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.segment.train_split"] == "train_aug" and run["metrics.seg_train_images"] == 4  # train + 1
    for m in ("pseudo_miou", "pseudo_miou_crf", "seg_miou", "iou_aeroplane", "iou_person"):
        assert 0 <= run[f"metrics.{m}"] <= 1, m
