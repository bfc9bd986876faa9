"""The COCO converter's pure parts: the compressed-RLE decoder against pycocotools, the checks of
one segmentation and of a whole file, the --out checks, and a failed write leaving --out as it was."""

import errno
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tkp_pcl.data import DataError
from tkp_pcl.data import coco_convert as cc
from tkp_pcl.data.errors import DataWriteError


def runs(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a mask (column-major, starting with zeros)."""
    flat = m.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.r_[0, edges, flat.size]).tolist()
    return [0, *counts] if flat[0] else counts


def test_rle_string_counts_decodes_what_pycocotools_encodes():
    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = rng.integers(1, 80, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if t % 4 == 0:
            m[:] = 0
        elif t % 4 == 1:
            m[:] = 1
        s = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        assert cc.rle_string_counts(s) == runs(m), t
    with pytest.raises(ValueError, match="ends in the middle"):
        cc.rle_string_counts("0P")  # 'P' - 48 = 32: more to come
    with pytest.raises(ValueError, match="the character ' '"):
        cc.rle_string_counts("0 ")


@pytest.mark.parametrize(
    "seg, problem",
    [
        ([[1, 1, 5, 1, 5, 5]], None),
        ([[], [1, 2]], None),  # short polygons are skipped, not wrong
        ({"counts": [0, 6, 6], "size": [3, 4]}, None),
        (
            {
                "counts": mask_utils.encode(np.asfortranarray(np.eye(3, 4, dtype=np.uint8)))["counts"].decode(),
                "size": [3, 4],
            },
            None,
        ),
        ([1, 1, 5, 1, 5, 5], "segmentation[0] is not a polygon"),
        ([[1, True, 5, 1, 5, 5]], "segmentation[0] is not a polygon"),
        ("abc", "neither a list of polygons nor an RLE"),
        ({"counts": [12]}, "without size"),
        ({"counts": [12], "size": [4, 3]}, "RLE size [4, 3] differs from its image's [height, width] [3, 4]"),
        ({"counts": [0, -1, 13], "size": [3, 4]}, "not all whole numbers >= 0"),
        ({"counts": [0, 6, 5], "size": [3, 4]}, "sum to 11, not height x width = 12"),
        ({"counts": "0000", "size": [3, 4]}, "sum to 0"),
        ({"counts": 12, "size": [3, 4]}, "neither a list of run lengths nor a compressed string"),
    ],
)
def test_check_segmentation(seg, problem):
    found = cc.check_segmentation(seg, 3, 4)
    assert found == problem if problem is None else problem in found


def instances(**extra) -> dict:
    return {
        "images": [
            {"id": "a", "file_name": "x/one.jpg", "height": 3, "width": 4},
            {"id": "b", "file_name": "two.jpg", "height": 3, "width": 4},
        ],
        "annotations": [{"image_id": "a", "category_id": 18, "segmentation": [[0, 0, 3, 0, 3, 2]]}],
        "categories": [{"id": 18, "name": "Dog"}, {"id": 15, "name": "person"}, {"id": 1}],
        **extra,
    }


def test_index_instances_keeps_file_order_string_ids_and_names_renamed_categories():
    inst = cc.index_instances(instances(), "f.json")
    assert [i["id"] for i in inst.images] == ["a", "b"] and len(inst.anns_of["a"]) == 1 and inst.anns_of["b"] == []
    assert inst.renamed == [(15, "person")]  # names compare without case; a category without a name is not compared
    line = cc.renamed_warning(inst)
    assert "1 category names differ" in line and "15 is 'person' here, 'bench' in COCO" in line
    js = instances()
    js["images"][1]["file_name"] = "y/one.png"
    with pytest.raises(
        DataError,
        match=r"images\[1\] \(id 'b'\) \(y/one.png\) and images\[0\] \(id 'a'\) \(x/one.jpg\) would both write the mask one.png",
    ):
        cc.index_instances(js, "f.json")


def test_check_out_dir(tmp_path, monkeypatch):
    assert cc.check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.png").write_bytes(b"")
    assert cc.check_out_dir(tmp_path / "old") == tmp_path / "old"  # an earlier run's masks: replaced
    monkeypatch.setattr(cc.os, "access", lambda p, mode: False)  # as for a non-root user in a read-only folder
    with pytest.raises(DataError, match=r"^--out .*old: .*old is not writable \(permission denied; make it writable"):
        cc.check_out_dir(tmp_path / "old")


def test_unreadable_instances_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "i.json").write_text("{}")

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cc, "open", refuse, raising=False)
    with pytest.raises(DataError, match=r"i.json: cannot be read \(permission denied; make it readable\)$"):
        cc.read_json(tmp_path / "i.json")


def test_a_failed_write_leaves_out_as_it_was(tmp_path, monkeypatch):
    import json

    (tmp_path / "i.json").write_text(json.dumps(instances()))
    out = tmp_path / "masks"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"old")

    def disk_full(self, path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cc.Image.Image, "save", disk_full)
    with pytest.raises(
        DataWriteError, match=r"^--out .*masks: cannot write the masks \(No space left on device\); nothing was changed"
    ):
        cc.write_coco_masks(tmp_path / "i.json", out, min_side=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.json", "masks"]  # no temporary folder left
    assert [p.name for p in out.iterdir()] == ["earlier.png"] and (out / "earlier.png").read_bytes() == b"old"


def test_a_first_short_polygon_is_skipped_and_the_rest_decoded_as_pycocotools_does():
    square = [1.0, 1.0, 9.0, 1.0, 9.0, 7.0, 1.0, 7.0]
    m, skipped = cc.annotation_mask([[2, 2, 5, 5], square], 10, 12)
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([square], 10, 12)))
    assert skipped == 1 and (m == ref).all() and m.sum() > 0
    assert cc.annotation_mask([], 10, 12) == (None, 1) and cc.annotation_mask([[]], 10, 12) == (None, 1)
