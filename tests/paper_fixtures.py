"""Small data sets in the real layouts at real image sizes, and weights files written from
randomly initialised models, so the paper-scale study files run here (no download).

- :func:`write_voc`: ``JPEGImages`` (JPEGs around 500x375), ``SegmentationClass`` (palette PNGs,
  the train and val images), ``SegmentationClassAug`` (greyscale PNGs, every image, as SBD's),
  ``Annotations`` (XML), ``ImageSets/Segmentation/{train,train_aug,val}.txt``; train_aug holds
  images outside train, sorted in among them as in SBD's list.
- :func:`write_coco`: ``train2014``/``val2014`` JPEGs (640x480 and the like) and
  ``annotations/instances_*.json`` in COCO's format; the masks come from ``bench data coco-masks``.
- :func:`write_vit_weights`: a timm ViT's state dict as ``.safetensors`` (``model.pretrained_file``);
  :func:`write_torchvision_weights`: torchvision's ImageNet backbone file in ``$TORCH_HOME``.
- :func:`paper_study`: a copy of a paper study file pointing at them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

VOC_SIZES = ((500, 375), (500, 333), (375, 500), (500, 366), (486, 500))  # (width, height), as VOC's
COCO_SIZES = ((640, 480), (480, 640), (640, 427), (612, 612))
PERSON, DOG, CAR, CAT = 15, 12, 7, 8  # VOC class ids
COCO_CATS = [(1, "person"), (3, "car"), (17, "cat"), (18, "dog")]


def _scene(rng: np.random.Generator, w: int, h: int, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A textured image and its class-id mask: one filled box a class, a 255 band around each."""
    img = rng.integers(60, 160, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for k, c in enumerate(classes):
        x0, y0 = int(w * (0.1 + 0.4 * k)), int(h * (0.15 + 0.3 * k))
        x1, y1 = min(w - 6, x0 + w // 3), min(h - 6, y0 + h // 3)
        mask[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3] = 255
        mask[y0:y1, x0:x1] = c
        img[y0:y1, x0:x1] = rng.integers(0, 255, 3).astype(np.uint8)
    return img, mask


def _voc_xml(image_id: str, w: int, h: int, names: list[str]) -> str:
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    return (
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename><size><width>{w}</width>"
        f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>"
    )


def write_voc(root: Path, n_train: int = 3, n_aug: int = 2, n_val: int = 2, seed: int = 0) -> Path:
    """A VOC 2012 layout under ``root`` (module docstring); returns ``root``."""
    from tkp_pcl.data import save_label_png
    from tkp_pcl.data.voc import VOC_CLASSES

    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    train = [f"2007_{32 + 7 * k:06d}" for k in range(n_train)]
    aug = [f"2007_{30 + 7 * k:06d}" for k in range(n_aug)]  # sorted in before each train image
    val = [f"2007_{500 + 7 * k:06d}" for k in range(n_val)]
    for k, image_id in enumerate(train + aug + val):
        w, h = VOC_SIZES[k % len(VOC_SIZES)]
        classes = [(PERSON, DOG, CAR, CAT)[k % 4], *([(CAT, PERSON)[k % 2]] if k % 3 else [])]
        img, mask = _scene(rng, w, h, classes)
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        Image.fromarray(mask).save(root / "SegmentationClassAug" / f"{image_id}.png")
        if image_id not in aug:
            save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            _voc_xml(image_id, w, h, [VOC_CLASSES[c] for c in classes])
        )
    lists = {"train": train, "train_aug": sorted(train + aug), "val": val}
    for name, ids in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_coco(root: Path, n_train: int = 3, n_val: int = 2, seed: int = 0) -> dict[str, Path]:
    """``train2014``/``val2014`` JPEGs and their instances JSON (polygons) under ``root``;
    returns the JSON paths by split."""
    rng = np.random.default_rng(seed)
    paths = {}
    for split, n, first_id in (("train2014", n_train, 9), ("val2014", n_val, 42)):
        (root / split).mkdir(parents=True, exist_ok=True)
        js = {
            "info": {},
            "licenses": [],
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": n_, "supercategory": ""} for i, n_ in COCO_CATS],
        }
        for k in range(n):
            img_id, (w, h) = first_id + 13 * k, COCO_SIZES[k % len(COCO_SIZES)]
            name = f"COCO_{split}_{img_id:012d}.jpg"
            cats = [COCO_CATS[k % 4][0], COCO_CATS[(k + 1) % 4][0]]
            img, mask = _scene(rng, w, h, [1, 2])
            for j, cat in enumerate(cats):
                ys, xs = np.nonzero(mask == j + 1)
                x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
                js["annotations"].append(
                    {
                        "id": len(js["annotations"]) + 1,
                        "image_id": img_id,
                        "category_id": cat,
                        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                        "iscrowd": 0,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                    }
                )
            Image.fromarray(img).save(root / split / name, quality=90)
            js["images"].append({"id": img_id, "file_name": name, "width": w, "height": h})
        (root / "annotations").mkdir(exist_ok=True)
        paths[split] = root / "annotations" / f"instances_{split}.json"
        paths[split].write_text(json.dumps(js))
    return paths


def write_vit_weights(path: Path, backbone: str = "vit_base_patch16_384", img_size: int = 384) -> Path:
    """A randomly initialised timm ``backbone``'s full state dict (head included, as timm's
    files) as ``.safetensors`` at ``path``: what ``model.pretrained_file`` reads."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(backbone, pretrained=False, img_size=img_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_torchvision_weights(torch_home: Path, backbone: str = "resnet101") -> Path:
    """A randomly initialised torchvision ``backbone``'s ImageNet weights file where
    ``weights_backbone="DEFAULT"`` looks for it (``$TORCH_HOME/hub/checkpoints``)."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.get_model(backbone).state_dict(), path)
    return path


def paper_study(source: Path, dest: Path, data_root: Path, weights: Path) -> Path:
    """A copy of the study file ``source`` with ``data.root`` and ``model.pretrained_file`` set
    (comments dropped; every other value as in the file)."""
    d = yaml.safe_load(source.read_text())
    d["data"]["root"] = str(data_root)
    d["base"]["model"]["pretrained_file"] = str(weights)
    dest.write_text(yaml.safe_dump(d, sort_keys=False))
    return dest
