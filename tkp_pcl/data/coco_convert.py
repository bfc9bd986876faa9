"""COCO instance annotations -> class-id mask PNGs, as ViT-PCM's ``datasets/parse_coco.py``.

Per image: background 0; each instance's pixels (polygons or RLE, crowd regions included: no
255) get class 1 + the position of its category id in COCO's fixed list of 80 ids
(:data:`tkp_pcl.data.coco.COCO_CATEGORIES`: person 1, dog (id 18) 17, toothbrush (id 90) 80),
whatever categories the file holds; instances are painted in annotation order and the first
one to cover a pixel keeps it. Images smaller than ``min_side`` px on a side, or with no object
pixel, are left out (no PNG).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .coco import CLASS_OF_CATEGORY
from .errors import DataError


@dataclass
class CocoMaskSummary:
    written: int
    too_small: int
    empty: int


def read_instances(path: str | Path):
    """The ``pycocotools.coco.COCO`` index of an instances JSON; :class:`DataError` (one line)
    for a missing file, invalid JSON or a file that is not COCO instance annotations."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (COCO's annotations/instances_train2014.json or _val2014.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path}: not COCO instance annotations (no {', '.join(missing)})")
    unknown = sorted({c["id"] for c in data["categories"]} - set(CLASS_OF_CATEGORY))
    if unknown:
        raise DataError(f"{path}: category id(s) {unknown} are not among COCO's 80 category ids")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def image_mask(coco, img_id: int) -> np.ndarray:
    """(H, W) uint8 class-id mask of one image: first instance to cover a pixel keeps it."""
    info = coco.imgs[img_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)):
        m = coco.annToMask(ann).astype(bool)
        mask[m & (mask == 0)] = CLASS_OF_CATEGORY[ann["category_id"]]
    return mask


def write_coco_masks(
    instances: str | Path, out_dir: str | Path, min_side: int = 256, progress: bool = True
) -> CocoMaskSummary:
    """Write ``out_dir/<image file stem>.png`` (greyscale class ids) for each kept image."""
    coco = read_instances(instances)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = CocoMaskSummary(0, 0, 0)
    for img_id in tqdm(sorted(coco.imgs), desc="COCO masks", unit="img", disable=not progress):
        info = coco.imgs[img_id]
        if min(info["height"], info["width"]) < min_side:
            summary.too_small += 1
            continue
        mask = image_mask(coco, img_id)
        if not mask.any():
            summary.empty += 1
            continue
        Image.fromarray(mask).save(out / f"{Path(info['file_name']).stem}.png")
        summary.written += 1
    return summary
