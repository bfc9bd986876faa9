"""MS COCO 2014 on a tiny instances JSON written here in COCO's own format (polygons, an
uncompressed-RLE crowd region, real category ids and names): the converter (as a subprocess of
`bench data coco-masks`), its pixels against hand expectations, the `coco` data kind, and a
study run on it to finished MLflow runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SMOKE, child_runs, write_study
from PIL import Image

from bench.cli import main
from tkp_pcl.config import CocoDataConfig
from tkp_pcl.data import COCO_CLASSES, DataError, load_splits
from tkp_pcl.data.coco_convert import write_coco_masks

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
]
PERSON, DOG, TOOTHBRUSH = 1, 17, 80  # 1 + position of the id in COCO's 80 ids


def box(x0, y0, x1, y1) -> list[list[float]]:
    """A COCO polygon (x, y pairs) of a rectangle."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def rle_counts(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE (column-major runs, starting with zeros) of a bool mask."""
    flat = m.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]])) if flat.size else []
    return np.diff(np.r_[0, edges]).tolist() if flat[0] == 0 else [0, *np.diff(np.r_[0, edges]).tolist()]


def write_coco(root: Path, split: str, images: list[tuple[int, int, int, list]]) -> Path:
    """Images (id, width, height, annotations as (category id, polygon | crowd mask)) with
    coloured textured regions; the instances JSON of the split. Returns the JSON's path."""
    rng = np.random.default_rng(len(images))
    colours = {1: (220, 60, 60), 18: (60, 60, 220), 90: (60, 200, 60)}
    (root / split).mkdir(parents=True)
    js = {"info": {}, "licenses": [], "images": [], "annotations": [], "categories": CATEGORIES}
    for img_id, w, h, anns in images:
        name = f"COCO_{split}_{img_id:012d}.jpg"
        img = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        for cat, shape in anns:
            if isinstance(shape, np.ndarray):
                img[shape] = colours[cat]
                seg, crowd, bbox = {"counts": rle_counts(shape), "size": [h, w]}, 1, [0, 0, w, h]
            else:
                ((x0, y0, x1, _, _, y1, *_),) = shape
                img[int(y0) : int(y1), int(x0) : int(x1)] = colours[cat]
                seg, crowd, bbox = shape, 0, [x0, y0, x1 - x0, y1 - y0]
            js["annotations"].append(
                {
                    "id": len(js["annotations"]) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "segmentation": seg,
                    "iscrowd": crowd,
                    "bbox": bbox,
                    "area": 1.0,
                }
            )
        Image.fromarray(img).save(root / split / name, quality=95)
        js["images"].append({"id": img_id, "file_name": name, "width": w, "height": h})
    (root / "annotations").mkdir(exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(js))
    return path


def crowd(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def make_coco(root: Path) -> dict[str, Path]:
    train = write_coco(
        root,
        "train2014",
        [
            (
                9,
                300,
                260,
                [(1, box(20, 20, 120, 120)), (18, box(100, 100, 200, 200)), (90, crowd(260, 300, 210, 240, 220, 280))],
            ),
            (25, 320, 280, [(18, box(40, 40, 160, 160)), (1, box(120, 120, 260, 240))]),  # the dog comes first
            (30, 200, 300, []),  # no annotation, and too small
            (42, 260, 256, [(1, box(10, 10, 90, 200))]),
            (77, 255, 400, [(1, box(10, 10, 90, 200))]),  # 255 px wide: left out
            (81, 300, 300, []),  # no object pixel: left out
        ],
    )
    val = write_coco(
        root,
        "val2014",
        [
            (5, 280, 260, [(1, box(30, 30, 150, 200)), (18, box(160, 60, 260, 180))]),
            (7, 260, 300, [(18, box(20, 20, 200, 150)), (90, crowd(300, 260, 200, 260, 30, 90))]),
        ],
    )
    return {"train2014": train, "val2014": val}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    js = make_coco(root)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = root / "SegmentationClass" / "train2014"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "data",
            "coco-masks",
            "--instances",
            str(js["train2014"]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert (
        "3 masks written" in res.stdout and "2 smaller than 256 px" in res.stdout and "1 without object" in res.stdout
    )
    write_coco_masks(js["val2014"], root / "SegmentationClass" / "val2014", progress=False)
    return root


def test_converter_pixels_match_hand_expectations(coco_root):
    masks = coco_root / "SegmentationClass" / "train2014"
    assert sorted(p.name for p in masks.iterdir()) == [f"COCO_train2014_{i:012d}.png" for i in (9, 25, 42)]
    m9 = np.asarray(Image.open(masks / "COCO_train2014_000000000009.png"))
    assert m9.shape == (260, 300) and m9.dtype == np.uint8
    assert set(np.unique(m9).tolist()) == {0, PERSON, DOG, TOOTHBRUSH}
    assert m9[60, 60] == PERSON and m9[150, 150] == DOG and m9[250, 10] == 0
    assert (m9[105:118, 105:118] == PERSON).all()  # overlap: the first instance (person) keeps it
    assert (m9[210:240, 220:280] == TOOTHBRUSH).all() and (m9 == TOOTHBRUSH).sum() == 30 * 60  # crowd, exact
    assert abs((m9 == PERSON).sum() - 100 * 100) < 250 and abs((m9 == DOG).sum() - (100 * 100 - 20 * 20)) < 250
    m25 = np.asarray(Image.open(masks / "COCO_train2014_000000000025.png"))
    assert (m25[125:158, 125:158] == DOG).all() and m25[200, 200] == PERSON  # the dog came first here


def test_coco_kind_loads_the_converted_masks(coco_root):
    s = load_splits(CocoDataConfig(root=str(coco_root), loader_workers=0))
    assert s.class_names == COCO_CLASSES and len(COCO_CLASSES) == 81
    assert COCO_CLASSES[PERSON] == "person" and COCO_CLASSES[DOG] == "dog" and COCO_CLASSES[TOOTHBRUSH] == "toothbrush"
    assert len(s.train) == 3 and len(s.val) == 2 and s.pseudo is s.train and s.seg_train is s.train
    assert s.train.load_image(0).shape == (260, 300, 3) and s.train.load_mask(0).shape == (260, 300)
    assert sorted(np.flatnonzero(s.train.all_labels()[0])) == [0, PERSON, DOG, TOOTHBRUSH]
    assert len(load_splits(CocoDataConfig(root=str(coco_root), pseudo_images=1)).pseudo) == 1


def test_converter_and_coco_kind_errors(tmp_path, capsys):
    assert main(["data", "coco-masks", "--instances", str(tmp_path / "no.json"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["data", "coco-masks", "--instances", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "list.json").write_text("[]")
    assert main(["data", "coco-masks", "--instances", str(tmp_path / "list.json"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no.json: no such file" in err[0] and "bad.json: invalid JSON" in err[1]
    assert "not COCO instance annotations" in err[2]
    with pytest.raises(DataError, match="train2014 does not exist.*bench data coco-masks"):
        load_splits(CocoDataConfig(root=str(tmp_path)))


def test_coco2014_study_without_the_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SMOKE.parent / "coco2014.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "coco2014.yaml: data.root: COCO root data/coco2014 does not exist" in err, err
    assert "train2014.zip" in err and "bench data coco-masks" in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_study_on_coco_runs_to_finished_runs_with_coco_class_names(coco_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(
        tmp_path / "coco.yaml",
        {"base.train.epochs": 1, "base.train.batch_size": 4, "base.segment.epochs": 1},
        data={"kind": "coco", "root": str(coco_root), "pseudo_images": 2, "loader_workers": 0},
        variants={"tkp-pcl": {}},
        name="coco_tiny",
    )
    assert main(["run", str(study)]) == 0
    children, _ = child_runs("sqlite:///mlflow.db", "coco_tiny")
    run = children.iloc[0]
    assert run["status"] == "FINISHED" and run["params.segment.train_split"] == "train2014"
    assert run["metrics.seg_train_images"] == 3  # pseudo labels made for the image not scored too
    for m in (
        "pseudo_miou",
        "pseudo_miou_crf",
        "seg_miou",
        "iou_background",
        "iou_person",
        "iou_dog",
        "iou_crf_person",
        "seg_iou_person",
        "seg_iou_dog",
        "seg_iou_toothbrush",
    ):
        assert 0 <= run[f"metrics.{m}"] <= 1, m
