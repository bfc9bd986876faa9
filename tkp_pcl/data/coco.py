"""MS COCO 2014 in the layout WSSS code uses, with class-id masks made by
:func:`tkp_pcl.data.coco_convert.write_coco_masks`.

``root`` holds ``train2014/*.jpg`` and ``val2014/*.jpg`` (the official image folders) and
``SegmentationClass/{train2014,val2014}/*.png``: greyscale class-id masks (0 background, 1-80
the categories in COCO's fixed order, :data:`COCO_CLASSES`), named like the images. A split is
the images that have a mask (the converter leaves out small and empty images). Image-level
labels are derived from the masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .split import Split

COCO_CATEGORIES = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)
"""COCO's 80 (category id, name) pairs in its fixed order (sorted by id)."""

COCO_CLASSES = ("background", *(name for _, name in COCO_CATEGORIES))
"""81 class names: class index = 1 + position of the category id in :data:`COCO_CATEGORIES`."""

CLASS_OF_CATEGORY = {cat_id: k + 1 for k, (cat_id, _) in enumerate(COCO_CATEGORIES)}

DOWNLOAD_HINT = (
    "download train2014.zip, val2014.zip and annotations_trainval2014.zip (cocodataset.org/#download), "
    "then write the masks with `bench data coco-masks --instances annotations/instances_train2014.json "
    "--out ROOT/SegmentationClass/train2014` (and the same for val2014)"
)


def coco_ids(root: str | Path, split: str) -> list[str]:
    """Sorted ids (file stems) of the images of ``split`` that have a mask."""
    root = Path(root).expanduser()
    for d in (root, root / split, root / "SegmentationClass" / split):
        if not d.is_dir():
            raise DataError(f"COCO folder {d} does not exist; {DOWNLOAD_HINT}")
    ids = sorted(p.stem for p in (root / "SegmentationClass" / split).glob("*.png"))
    if not ids:
        raise DataError(f"COCO folder {root / 'SegmentationClass' / split} holds no masks; {DOWNLOAD_HINT}")
    return ids


def coco_split(root: str | Path, split: str, max_images: int | None = None) -> Split:
    """The COCO 2014 split ``split`` (``train2014`` or ``val2014``) under ``root``."""
    root = Path(root).expanduser()
    ids = coco_ids(root, split)[:max_images]
    images, masks = root / split, root / "SegmentationClass" / split
    if not (images / f"{ids[0]}.jpg").is_file():
        raise DataError(f"COCO image {images / (ids[0] + '.jpg')} (of mask {masks / ids[0]}.png) does not exist")

    def load_image(i: int) -> np.ndarray:
        return np.asarray(Image.open(images / f"{ids[i]}.jpg").convert("RGB"))

    def load_mask(i: int) -> np.ndarray:
        return np.asarray(Image.open(masks / f"{ids[i]}.png")).astype(np.uint8)

    return Split(f"coco-{split}", COCO_CLASSES, ids, load_image, load_mask)
