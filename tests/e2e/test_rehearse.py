"""``bench run STUDY --rehearse``: every stage of each configuration on a few images, measured,
the study's cost projected; a stage that fails is one line naming it; nothing is recorded."""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, write_study
from paper_fixtures import paper_study, write_coco, write_torchvision_weights, write_vit_weights, write_voc

from bench.cli import main

STAGES = ["stage 1", "monitor", "pseudo labels", "stage-2 pseudo labels", "stage 2 training", "stage 2 evaluation"]


def test_rehearsal_of_the_smoke_study_measures_every_stage_and_records_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "s.yaml")
    assert main(["run", str(study), "--rehearse", "--images", "2", "--steps", "1", "--accelerator", "a100"]) == 0
    out = capsys.readouterr().out
    assert "rehearsal of smoke" in out and "projection, not a measurement" in out and "A100 GPU-h" in out
    js = json.loads((tmp_path / "reports" / "smoke" / "rehearsal.json").read_text())
    assert js["accelerator"] == "A100" and js["utilisation"] == 0.4 and js["matmul_gflops_fp32"] > 0
    rows = {(r["variant"], r["stage"]): r for r in js["rows"]}
    assert [s for v, s in rows if v == "vit-pcm"] == STAGES
    assert all(rows["vit-pcm", s]["flops_per_image"] > 0 for s in STAGES if s != "stage-2 pseudo labels")
    assert rows["tkp-pcl", "stage 2 training"]["note"] == "as vit-pcm"  # same stage-2 configuration
    assert rows["vit-pcm", "stage 1"]["images"] == 96 * 2  # the study's 96 images x 2 epochs x 1 seed
    assert (tmp_path / "reports" / "smoke" / "rehearsal.csv").is_file()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".bench").exists()


def test_a_stage_2_setting_the_network_cannot_take_is_caught_in_seconds(tmp_path, monkeypatch, capsys):
    """DeepLab's image-pooling BatchNorm cannot train on a batch of 1: the file validates, and
    `bench run` would fail only after stage 1 and the pseudo labels of every trial."""
    monkeypatch.chdir(tmp_path)
    late = {"base.segment.model": "deeplabv3_mobilenet_v3_large", "base.segment.batch_size": 1}
    study = write_study(tmp_path / "late.yaml", late, name="late")
    t0 = time.perf_counter()
    assert main(["run", str(study), "--rehearse", "--images", "2", "--steps", "1"]) == 1
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        "bench: error: rehearsal of vit-pcm: stage 2 training: ValueError: Expected more than 1 value"
    )
    assert took < 60, took
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".bench").exists()
    assert not (tmp_path / "reports").exists()


def test_bad_rehearsal_flags_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "s.yaml")
    assert main(["run", str(study), "--rehearse", "--accelerator", "TPU"]) == 2
    assert main(["run", str(study), "--rehearse", "--images", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--accelerator: one of A100, H100, H200, L40S, V100" in err[0] and "--images must be >= 2" in err[1]


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory):
    """VOC and COCO layouts at real image sizes, the COCO masks through `bench data coco-masks`,
    a random ViT-B/16 384 weights file and torchvision's ResNet-101 file in a TORCH_HOME."""
    root = tmp_path_factory.mktemp("paper")
    write_voc(root / "VOC2012")
    for split, path in write_coco(root / "coco").items():
        out = root / "coco" / "SegmentationClass" / split
        assert main(["data", "coco-masks", "--instances", str(path), "--out", str(out)]) == 0
    weights = write_vit_weights(root / "weights" / "vit_base_patch16_384.safetensors")
    write_torchvision_weights(root / "torch", "resnet101")
    return root, weights


@pytest.mark.slow
@pytest.mark.paper
@pytest.mark.parametrize("name,data", [("voc2012", "VOC2012"), ("coco2014", "coco")])
def test_the_paper_studies_rehearse_on_the_cpu(paper_data, name, data, tmp_path):
    root, weights = paper_data
    study = paper_study(ROOT / "studies" / f"{name}.yaml", tmp_path / f"{name}.yaml", root / data, weights)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(root / "torch"), "HF_HUB_OFFLINE": "1"}
    keep = tmp_path / "keep"
    cmd = [
        sys.executable,
        "-m",
        "bench.cli",
        "run",
        str(study),
        "--rehearse",
        "--images",
        "2",
        "--steps",
        "1",
        "--keep",
        str(keep),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=3600)
    assert res.returncode == 0, res.stderr[-2000:]
    js = json.loads((keep / "rehearsal.json").read_text())
    rows = {(r["variant"], r["stage"]): r for r in js["rows"]}
    assert {v for v, _ in rows} == {"vit-pcm", "tkp", "pcl", "tkp-pcl"}
    for stage in ("stage 1 (frozen)", "stage 1 (trainable)", *STAGES[1:]):
        assert ("vit-pcm", stage) in rows, stage
    assert rows["vit-pcm", "stage 1 (trainable)"]["flops_per_image"] > 1e11  # ViT-B/16 at 384 px, fwd + bwd
    assert rows["vit-pcm", "pseudo labels"]["flops_per_image"] > 4e11  # a 960 px forward: 3,600 patches
    assert (
        rows["vit-pcm", "stage 2 evaluation"]["flops_per_image"]
        > rows["vit-pcm", "stage 2 training"]["flops_per_image"] / 3
    )
    assert (keep / "artifacts" / "vit-pcm" / "overlay.png").is_file() and (keep / "pseudo").is_dir()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".bench").exists()
