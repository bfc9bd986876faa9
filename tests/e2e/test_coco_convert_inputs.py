"""`bench data coco-masks` on bad inputs, as a user runs it (one subprocess per case): each ends
in exit 2 and one line on stderr (no traceback, nothing written), or in exit 0 with the masks
it should write and the expected warning or count."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

SQUARE = [5, 5, 30, 5, 30, 30, 5, 30]


def rle(h: int, w: int) -> dict:
    """An uncompressed RLE of an h x w image covering its left half (column-major runs)."""
    left = (w // 2) * h
    return {"counts": [0, left, h * w - left], "size": [h, w]}


BASE = {
    "info": {},
    "licenses": [],
    "images": [
        {"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 40, "width": 50},
        {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "height": 30, "width": 60},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 18, "segmentation": rle(30, 60), "iscrowd": 1},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
}
MASK1, MASK2 = "COCO_val2014_000000000001.png", "COCO_val2014_000000000002.png"


def variant(path: str, value=None, delete: bool = False) -> dict:
    """BASE with the entry at ``path`` (``annotations.0.segmentation``) set to ``value`` or deleted."""
    js = copy.deepcopy(BASE)
    *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    d = js
    for k in keys:
        d = d[k]
    if delete:
        del d[last]
    else:
        d[last] = value
    return js


def box_only() -> dict:
    js = copy.deepcopy(BASE)
    for a in js["annotations"]:
        del a["segmentation"]
        a["bbox"] = [1, 1, 10, 10]
    return js


def string_ids(images_only: bool, prefix: str = "") -> dict:
    js = copy.deepcopy(BASE)
    for x in js["images"]:
        x["id"] = f"{prefix}{x['id']}"
    if not images_only:
        for a in js["annotations"]:
            a["image_id"] = f"{prefix}{a['image_id']}"
    return js


def coco(tmp_path: Path, js, *args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``bench data coco-masks`` on ``js`` (a dict, or a path as is) into ``out``."""
    inst = js if isinstance(js, Path) else tmp_path / "instances.json"
    if not isinstance(js, Path):
        inst.write_text(json.dumps(js))
    out = out or tmp_path / "masks"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench.cli", "data", "coco-masks", "--instances", str(inst), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def masks(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def _out_is_file(tmp):
    (tmp / "masks").write_text("x")
    return BASE, None


def _out_under_file(tmp):
    (tmp / "f").write_text("x")
    return BASE, tmp / "f" / "masks"


def _out_holds_other_files(tmp):
    (tmp / "masks").mkdir()
    (tmp / "masks" / "photo.jpg").write_text("x")
    return BASE, None


def _instances_is_folder(tmp):
    (tmp / "dir.json").mkdir()
    return tmp / "dir.json", None


BAD = {  # case: (instances or a function of tmp_path -> (instances, out), what stderr says)
    "out is a file": (_out_is_file, "masks: is a file, not a folder (name a folder"),
    "out under a file": (_out_under_file, "f is a file, not a folder"),
    "out holds other files": (_out_holds_other_files, "holds 1 entries that are not masks (e.g. photo.jpg)"),
    "instances is a folder": (_instances_is_folder, "dir.json: is a folder, not a file"),
    "category_id not in categories": (
        variant("annotations.0.category_id", 12),
        "annotations[0] (id 1): category_id 12 is not in the file's categories",
    ),
    "box-only file": (box_only(), "has no segmentation masks (its 2 annotations have none, e.g. boxes only)"),
    "annotation without segmentation": (
        variant("annotations.1.segmentation", delete=True),
        "annotations[1] (id 2): no `segmentation`",
    ),
    "image without height": (variant("images.1.height", delete=True), "images[1] (id 2): no `height`"),
    "category without id": (variant("categories.1.id", delete=True), "categories[1]: no `id`"),
    "annotations not a list": (
        variant("annotations", {"1": BASE["annotations"][0]}),
        "`annotations` is a dict, not a list",
    ),
    "images not a list": (variant("images", None), "`images` is a NoneType, not a list"),
    "polygon not numbers": (
        variant("annotations.0.segmentation", [["a", 1, 2, 3, 4, 5]]),
        "segmentation[0] is not a polygon",
    ),
    "flat polygon": (variant("annotations.0.segmentation", SQUARE), "segmentation[0] is not a polygon"),
    "RLE size differs": (
        variant("annotations.1.segmentation", rle(40, 50)),
        "annotations[1] (id 2): RLE size [40, 50] differs from its image's [height, width] [30, 60]",
    ),
    "RLE counts too long": (
        variant("annotations.1.segmentation.counts", [0, 900, 1000]),
        "RLE counts sum to 1900, not height x width = 1800",
    ),
    "RLE string too short": (
        variant("annotations.1.segmentation.counts", "0000"),
        "annotations[1] (id 2): RLE counts sum to 0, not height x width = 1800",
    ),
    "RLE string cut": (variant("annotations.1.segmentation.counts", "0P"), "RLE counts string ends in the middle"),
    "string image ids, numeric image_id": (
        string_ids(images_only=True),
        "image_id 1 is not the id of any image (the images' ids are of another type",
    ),
    "one id for two images": (
        variant("images.1.id", 1),
        "images[1]: id 1 again (images[0] has it; image ids must differ)",
    ),
    "one stem for two images": (
        variant("images.1.file_name", "other/COCO_val2014_000000000001.jpg"),
        "images[1] (id 2) (other/COCO_val2014_000000000001.jpg) and images[0] (id 1) "
        "(COCO_val2014_000000000001.jpg) would both write the mask COCO_val2014_000000000001.png",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    make, expected = BAD[case]
    js, out = make(tmp_path) if callable(make) else (make, None)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = coco(tmp_path, js, "--min-side", "1", out=out)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(err) == 1 and err[0].startswith("bench: error: ") and expected in err[0], res.stderr
    assert "Traceback" not in res.stderr
    written = {"instances.json"} if not isinstance(js, Path) else set()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, *written})  # no mask folder, no temporary one
    assert not (tmp_path / "masks").is_dir() or masks(tmp_path / "masks") == ["photo.jpg"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the permissions")
@pytest.mark.parametrize("what", ["instances", "out"])
def test_unreadable_instances_or_read_only_out_is_one_line(what, tmp_path):
    (tmp_path / "instances.json").write_text(json.dumps(BASE))
    (tmp_path / "masks").mkdir()
    target = tmp_path / ("instances.json" if what == "instances" else "masks")
    target.chmod(0o000 if what == "instances" else 0o555)
    try:
        res = coco(tmp_path, tmp_path / "instances.json", "--min-side", "1")
    finally:
        target.chmod(0o755)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "permission denied" in err[0], res.stderr


@pytest.mark.parametrize("segmentation", [[], [[]], [[3, 3]], [[3, 3, 9, 9]], [[3, 3, 9]]], ids=str)
def test_polygons_of_fewer_than_3_points_are_skipped_and_counted(segmentation, tmp_path):
    js = variant("annotations.1.segmentation", segmentation)  # image 2 then has no object pixel
    js["annotations"][0]["segmentation"] = [[1, 1, 4, 4], SQUARE]  # first: pycocotools takes it for a box
    res = coco(tmp_path, js, "--min-side", "1")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "1 masks written" in res.stdout and "1 without object pixels" in res.stdout
    assert "skipped: 2 polygons of fewer than 3 points (they cover no pixel)" in res.stdout
    (tmp_path / "ref").mkdir()
    ref = coco(tmp_path / "ref", BASE, "--min-side", "1")  # the same image with the square alone
    assert ref.returncode == 0 and "skipped: 0 polygons" in ref.stdout
    assert masks(tmp_path / "masks") == [MASK1]
    a = np.asarray(Image.open(tmp_path / "masks" / MASK1))
    assert (a == np.asarray(Image.open(tmp_path / "ref" / "masks" / MASK1))).all() and a.sum() > 0


def test_string_image_ids_are_accepted(tmp_path):
    res = coco(tmp_path, string_ids(images_only=False, prefix="img-"), "--min-side", "1")  # was "0 masks written"
    assert res.returncode == 0 and "2 masks written" in res.stdout, res.stdout + res.stderr
    assert masks(tmp_path / "masks") == [MASK1, MASK2]


def test_a_rerun_leaves_only_the_masks_it_wants(tmp_path):
    first = coco(tmp_path, BASE, "--min-side", "1")
    assert first.returncode == 0 and "2 masks written" in first.stdout
    assert masks(tmp_path / "masks") == [MASK1, MASK2]
    again = coco(tmp_path, BASE, "--min-side", "35")  # image 2 is 30 px high
    assert again.returncode == 0, again.stderr
    assert "1 masks written" in again.stdout and "(replacing the 2 masks it held)" in again.stdout
    assert "1 smaller than 35 px" in again.stdout
    assert masks(tmp_path / "masks") == [MASK1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instances.json", "masks"]  # no temporary folder left


def test_category_names_of_another_data_set_warn_in_one_line(tmp_path):
    js = copy.deepcopy(BASE)
    js["categories"] = [{"id": 1, "name": "aeroplane"}, {"id": 18, "name": "dog"}, {"id": 15, "name": "person"}]
    res = coco(tmp_path, js, "--min-side", "1")
    err = res.stderr.strip().splitlines()
    assert res.returncode == 0 and "2 masks written" in res.stdout, res.stderr
    assert len(err) == 1 and err[0].startswith("bench: warning: ") and "2 category names differ from COCO's" in err[0]
    assert "1 is 'aeroplane' here, 'person' in COCO" in err[0] and "15 is 'person' here, 'bench' in COCO" in err[0]
    assert coco(tmp_path, BASE, "--min-side", "1").stderr == ""  # COCO's own names: no warning


def test_reading_line_names_the_file_and_its_size(tmp_path):
    res = coco(tmp_path, BASE, "--min-side", "1")
    assert res.stdout.splitlines()[0] == f"reading {tmp_path / 'instances.json'} (0 MB) ..."
