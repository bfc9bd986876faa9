"""PASCAL VOC 2012 in its published layout.

``root`` holds ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs) and/or SBD's
``SegmentationClassAug/*.png`` (greyscale class ids), and ``ImageSets/Segmentation/<split>.txt``
(one image id a line). 255 in a mask is the boundary/ignore label. Image-level labels are derived
from the masks, or, for an image without a mask (train_aug without SBD's masks), from its
``Annotations/<id>.xml`` objects.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .palette import voc_colormap
from .split import Split

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

DOWNLOAD_HINT = (
    "download VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012) and, for "
    "train_aug, SBD's SegmentationClassAug and train_aug.txt"
)


def _read_mask(path: Path) -> np.ndarray:
    img = Image.open(path)
    if img.mode in ("P", "L", "I", "I;16"):
        return np.asarray(img).astype(np.uint8)
    # an RGB rendering of the palette: map colours back to ids
    rgb = np.asarray(img.convert("RGB")).astype(np.int32)
    cmap = voc_colormap().astype(np.int32)
    key = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
    lut = dict(zip(key.tolist(), range(256)))
    flat = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    vals, inv = np.unique(flat, return_inverse=True)
    ids = np.array([lut.get(v, 255) for v in vals.tolist()], np.uint8)
    return ids[inv].reshape(flat.shape)


def _list_file(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DataError(f"VOC root {root} does not exist; {DOWNLOAD_HINT}")
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC split file {list_file} does not exist; {DOWNLOAD_HINT}")
    return list_file


def voc_ids(root: str | Path, split: str) -> list[str]:
    """The image ids listed in ``ImageSets/Segmentation/<split>.txt``."""
    list_file = _list_file(Path(root).expanduser(), split)
    return [ln.split()[0] for ln in list_file.read_text().splitlines() if ln.strip()]


def voc_split(root: str | Path, split: str, mask_dir: str = "auto", max_images: int | None = None) -> Split:
    """The VOC split ``split`` (``train``, ``train_aug``, ``val``, ...) under ``root``."""
    root = Path(root).expanduser()
    list_file = _list_file(root, split)
    if mask_dir == "auto":
        aug = root / "SegmentationClassAug"
        mask_dir = "SegmentationClassAug" if aug.is_dir() else "SegmentationClass"
    masks = root / mask_dir
    images = root / "JPEGImages"
    for d in (images, masks):
        if not d.is_dir():
            raise DataError(f"VOC folder {d} does not exist; {DOWNLOAD_HINT}")
    ids = voc_ids(root, split)
    if max_images is not None:
        ids = ids[:max_images]
    missing = [i for i in ids[:50] if not (images / f"{i}.jpg").is_file()]
    if missing:
        raise DataError(f"VOC image {images / (missing[0] + '.jpg')} listed in {list_file} does not exist")

    def load_image(i: int) -> np.ndarray:
        return np.asarray(Image.open(images / f"{ids[i]}.jpg").convert("RGB"))

    def load_mask(i: int) -> np.ndarray:
        p = masks / f"{ids[i]}.png"
        if not p.is_file():
            raise DataError(f"VOC mask {p} does not exist")
        return _read_mask(p)

    def load_classes(i: int) -> np.ndarray:
        p, xml = masks / f"{ids[i]}.png", root / "Annotations" / f"{ids[i]}.xml"
        if p.is_file() or not xml.is_file():
            return np.unique(load_mask(i))
        return xml_classes(xml)

    return Split(f"voc-{split}", VOC_CLASSES, ids, load_image, load_mask, load_classes=load_classes)


def xml_classes(path: Path) -> np.ndarray:
    """Class ids of the objects named in a VOC annotation XML (background included)."""
    try:
        names = [o.findtext("name", "").strip() for o in ET.parse(path).getroot().iter("object")]
    except ET.ParseError as e:
        raise DataError(f"VOC annotation {path} is not valid XML: {e}") from None
    unknown = sorted(set(names) - set(VOC_CLASSES[1:]))
    if unknown:
        raise DataError(f"VOC annotation {path} names unknown classes {unknown}")
    return np.array(sorted({0, *(VOC_CLASSES.index(n) for n in names)}), np.uint8)
