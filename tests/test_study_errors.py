"""Malformed study files: exit 2, one line naming the YAML path, nothing written."""

import pytest

from bench.cli import main
from helpers import SMOKE, write_study

CASES = [
    ({"variantz": {}}, "variantz: unknown key"),
    ({"variants.tkp-pcl": {"pooling.k_ratio": 1.5}}, "variants.tkp-pcl.pooling.k_ratio: Input should be less than or equal to 1 (got 1.5)"),
    ({"variants.tkp-pcl": {"pooling.k_rato": 0.1}}, "variants.tkp-pcl.pooling.k_rato: unknown key; allowed: k, k_ratio, kind, lse_r"),
    ({"base.pooling.kind": "median"}, "base.pooling.kind: Input should be 'max', 'topk', 'mean' or 'lse'"),
    ({"base.train.epochs": 0}, "base.train.epochs: Input should be greater than or equal to 1"),
    ({"base.train.lr": "fast"}, "base.train.lr: Input should be a valid number"),
    ({"seeds": "abc"}, "seeds: Input should be a valid list"),
    ({"seeds": [1, 1]}, "seeds: seeds must be unique"),
    ({"grid": {"loss.pce_wieght": [0.1]}}, "grid.loss.pce_wieght: unknown key"),
    ({"grid": {"pooling.k_ratio": [0.1, 0]}}, "grid.pooling.k_ratio: Input should be greater than 0"),
    ({"data.kind": "imagenet"}, "data: Input tag 'imagenet' found using 'kind' does not match"),
    ({"data.n_train": -3}, "data.n_train: Input should be greater than or equal to 1"),
    ({"base.model.embed_dim": 100, "base.model.num_heads": 3}, "base.model: embed_dim (100) must be divisible by num_heads (3)"),
    ({"name": "a b/c"}, "name: must be letters"),
    ({"variants": {}}, "variants: Dictionary should have at least 1 item"),
    ({"search": {"space": {"pooling.k_ratio": {"type": "float", "low": 0.5, "high": 0.1}}}}, "search.space.pooling.k_ratio"),
    ({"search": {"space": {"pooling.nope": {"type": "float", "low": 0.1, "high": 0.5}}}}, "search.space.pooling.nope"),
    ({"search": {"variant": "ghost", "space": {"pooling.k_ratio": {"type": "float", "low": 0.1, "high": 0.5}}}}, "search.variant: 'ghost' is not a variant"),
]


def run_bad(tmp_path, monkeypatch, capsys, path):
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".bench").exists()
    return err


@pytest.mark.parametrize("changes,message", CASES, ids=[c[1].split(":")[0] for c in CASES])
def test_malformed_study_is_one_line_exit_2(tmp_path, monkeypatch, capsys, changes, message):
    path = write_study(tmp_path / "bad.yaml", changes)
    err = run_bad(tmp_path, monkeypatch, capsys, path)
    assert message in err, err
    assert str(path) in err


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\nvariants: [unclosed\n", ":3:1: invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: !!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
    ],
)
def test_unreadable_study_files(tmp_path, monkeypatch, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert message in run_bad(tmp_path, monkeypatch, capsys, path)


def test_missing_study_file_and_missing_data(tmp_path, monkeypatch, capsys):
    assert "study file not found" in run_bad(tmp_path, monkeypatch, capsys, tmp_path / "nope.yaml")
    voc = write_study(tmp_path / "voc.yaml", data={"kind": "voc", "root": str(tmp_path / "VOC2012")})
    err = run_bad(tmp_path, monkeypatch, capsys, voc)
    assert f"VOC root {tmp_path / 'VOC2012'} does not exist" in err


def test_shipped_studies_are_valid():
    from bench.study import load_study, study_jobs

    counts = {}
    for path in sorted(SMOKE.parent.glob("*.yaml")):
        study = load_study(path)
        counts[study.name] = len(study_jobs(study)) or study.search.n_trials
    assert counts["quickstart"] == 12 and counts["smoke"] == 2
    assert counts["ablation_k"] == 18 and counts["ablation_pce"] == 30 and counts["search"] == 30
    assert counts["voc2012"] == 4 and counts["coco2014"] == 4


def test_voc2012_study_without_the_data_names_the_missing_path(tmp_path, monkeypatch, capsys):
    err = run_bad(tmp_path, monkeypatch, capsys, SMOKE.parent / "voc2012.yaml")
    assert "VOC root data/VOCdevkit/VOC2012 does not exist" in err and "VOCtrainval_11-May-2012.tar" in err
