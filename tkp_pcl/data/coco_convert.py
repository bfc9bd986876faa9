"""COCO instance annotations -> class-id mask PNGs, as ViT-PCM's ``datasets/parse_coco.py``.

Per image: background 0; each instance's pixels (polygons or RLE, crowd regions included: no
255) get class 1 + the position of its category id in COCO's fixed list of 80 ids
(:data:`tkp_pcl.data.coco.COCO_CATEGORIES`: person 1, dog (id 18) 17, toothbrush (id 90) 80),
whatever categories the file holds; instances are painted in annotation order and the first
one to cover a pixel keeps it. Images smaller than ``min_side`` px on a side, or with no object
pixel, are left out (no PNG).

Masks are decoded as pycocotools' ``COCO.annToMask`` decodes them, with one difference: a
polygon of fewer than 3 points (which covers no pixel, and which pycocotools refuses with an
exception when it comes first) is skipped and counted. Every other malformed input is a
:class:`DataError` naming the file (or ``--out``) and the entry, found before anything is
written. The masks are written into a fresh folder beside ``out_dir`` and swapped in when
complete, so ``out_dir`` never holds half a set, nor masks of an earlier run that are no longer
wanted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .coco import CLASS_OF_CATEGORY, COCO_CATEGORIES
from .errors import DataError, DataWriteError

INSTANCES_HINT = "COCO's annotations/instances_train2014.json or _val2014.json"
COCO_NAMES = dict(COCO_CATEGORIES)


@dataclass
class CocoMaskSummary:
    written: int
    too_small: int
    empty: int
    short_polygons: int = 0
    """Polygons of fewer than 3 points (no pixel), skipped; an empty ``segmentation`` counts one."""
    replaced: int = 0
    """Masks of an earlier run that ``out_dir`` held, replaced by this run's."""


@dataclass
class Instances:
    """A checked instances file: its images in file order and each image's annotations."""

    path: Path
    images: list[dict]
    anns_of: dict[Any, list[dict]]
    renamed: list[tuple[int, str]] = field(default_factory=list)
    """(category id, the file's name) where the name differs from COCO's for that id."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_NUMBER = frozenset({int, float})


def check_out_dir(out: str | Path) -> Path:
    """``out`` as a folder masks can be written to: new, empty or holding only PNGs (an earlier
    run's masks). :class:`DataError` starting with ``--out PATH:`` otherwise. Writes nothing."""
    out = Path(out)
    what = f"--out {out}"
    if out.exists() and not out.is_dir():
        raise DataError(
            f"{what}: is a file, not a folder (name a folder for the masks, e.g. ROOT/SegmentationClass/train2014)"
        )
    anc = out
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc != out and not anc.is_dir():
        raise DataError(f"{what}: {anc} is a file, not a folder (name a folder for the masks)")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if not (p.is_file() and p.suffix == ".png"))
        if others:
            raise DataError(
                f"{what}: holds {len(others)} entries that are not masks (e.g. {others[0]}); "
                "name a new folder, or one holding only masks of an earlier run (they are replaced)"
            )
    parent = out.parent if out.exists() else anc
    for d in ([out] if out.exists() else []) + [parent]:
        if not os.access(d, os.W_OK | os.X_OK):
            raise DataError(f"{what}: {d} is not writable (permission denied; make it writable or name another folder)")
    return out


def read_json(path: str | Path, progress: bool = False) -> dict:
    """The instances file's JSON; :class:`DataError` (one line naming it) when it is missing,
    unreadable or not JSON. ``progress``: print ``reading FILE (N MB) ...`` first."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file ({INSTANCES_HINT})")
    if not path.is_file():
        raise DataError(f"{path}: no such file ({INSTANCES_HINT})")
    if progress:
        print(f"reading {path} ({path.stat().st_size / 1e6:.0f} MB) ...", flush=True)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except PermissionError:
        raise DataError(f"{path}: cannot be read (permission denied; make it readable)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None


def _where(kind: str, i: int, entry) -> str:
    """``annotations[3] (id 4)``: an entry of a list, with its id where it has one."""
    eid = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind}[{i}]" + (f" (id {eid!r})" if eid is not None else "")


def rle_string_counts(s: str) -> list[int]:
    """The run lengths of a compressed RLE string, decoded as pycocotools' ``rleFrString``
    (5 bits a character from ``'0'``, deltas from the run two back after the third);
    ``ValueError`` for a character out of range or a string that ends mid-number."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p == len(s):
                raise ValueError("ends in the middle of a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"has the character {s[p]!r}, not one of '0' to 'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def check_segmentation(seg, h: int, w: int) -> str | None:
    """What is wrong with one annotation's ``segmentation`` for an ``h`` x ``w`` image, or None.
    Polygons of fewer than 3 points are not wrong (they are skipped)."""
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(type(v) in _NUMBER for v in poly):  # bool is not a number
                return (
                    f"segmentation[{k}] is not a polygon (a list of x, y numbers); segmentation is a list of "
                    "polygons or an RLE {counts, size}"
                )
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return f"segmentation is a dict without {'counts' if 'counts' not in seg else 'size'} (an RLE has counts and size)"
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return f"RLE size {size!r} is not [height, width]"
        if size != [h, w]:
            return f"RLE size {size} differs from its image's [height, width] {[h, w]}"
        counts = seg["counts"]
        if isinstance(counts, str):
            try:
                counts = rle_string_counts(counts)
            except ValueError as e:
                return f"RLE counts string {e}"
        elif not isinstance(counts, list):
            return "RLE counts are neither a list of run lengths nor a compressed string"
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "RLE counts are not all whole numbers >= 0"
        if sum(counts) != h * w:
            return f"RLE counts sum to {sum(counts)}, not height x width = {h * w}"
        return None
    return "segmentation is neither a list of polygons nor an RLE {counts, size}"


def index_instances(data, path: str | Path) -> Instances:
    """Check a loaded instances file and index it; :class:`DataError` ``PATH: <entry>: what is
    wrong (what to do)`` on the first problem found."""
    path = Path(path)
    fix = "(fix the file, or use " + INSTANCES_HINT + ")"

    def bad(msg: str) -> DataError:
        return DataError(f"{path}: {msg} {fix}")

    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path}: not COCO instance annotations (no {', '.join(missing)})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise bad(f"`{key}` is a {type(data[key]).__name__}, not a list")
    categories, renamed = _categories(data["categories"], path, bad)
    images = _images(data["images"], bad)
    anns = data["annotations"]
    if anns and all(isinstance(a, dict) and "segmentation" not in a for a in anns):
        raise DataError(
            f"{path}: has no segmentation masks (its {len(anns)} annotations have none, e.g. boxes only); "
            f"use {INSTANCES_HINT}"
        )
    return Instances(path, list(images.values()), _annotations(anns, images, categories, bad), renamed)


def _categories(entries: list, path: Path, bad) -> tuple[dict[int, str | None], list[tuple[int, str]]]:
    """Category id -> name (None if unnamed), and the (id, name) pairs named unlike COCO's."""
    categories: dict[int, str | None] = {}
    for i, c in enumerate(entries):
        if not isinstance(c, dict) or "id" not in c:
            raise bad(f"{_where('categories', i, c)}: no `id`")
        if not _is_int(c["id"]):
            raise bad(f"{_where('categories', i, c)}: `id` is not a whole number")
        categories[c["id"]] = c.get("name") if isinstance(c.get("name"), str) else None
    unknown = sorted(set(categories) - set(CLASS_OF_CATEGORY))
    if unknown:
        raise DataError(f"{path}: category id(s) {unknown} are not among COCO's 80 category ids")
    renamed = [
        (cid, name)
        for cid, name in sorted(categories.items())
        if name is not None and name.strip().lower() != COCO_NAMES[cid]
    ]
    return categories, renamed


def _images(entries: list, bad) -> dict[Any, dict]:
    """Image id -> image entry, each checked: ids and file stems unique, sizes whole and positive."""
    images: dict[Any, dict] = {}
    where_img: dict[Any, str] = {}
    stems: dict[str, str] = {}
    for i, img in enumerate(entries):
        where = _where("images", i, img)
        if not isinstance(img, dict):
            raise bad(f"{where}: not an object")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise bad(f"{where}: no `{key}`")
        if not (_is_int(img["id"]) or isinstance(img["id"], str)):
            raise bad(f"{where}: `id` is neither a whole number nor a string")
        if img["id"] in images:
            raise bad(f"images[{i}]: id {img['id']!r} again ({where_img[img['id']]} has it; image ids must differ)")
        for key in ("height", "width"):
            if not (_is_int(img[key]) and img[key] > 0):
                raise bad(f"{where}: `{key}` {img[key]!r} is not a whole number > 0")
        if not (isinstance(img["file_name"], str) and Path(img["file_name"]).stem):
            raise bad(f"{where}: `file_name` {img['file_name']!r} is not a file name")
        stem = Path(img["file_name"]).stem
        if stem in stems:
            raise bad(
                f"{where} ({img['file_name']}) and {stems[stem]} would both write the mask {stem}.png "
                "(masks are named by file stem: one file for two images)"
            )
        stems[stem] = f"{where} ({img['file_name']})"
        where_img[img["id"]] = f"images[{i}]"
        images[img["id"]] = img
    return images


def _annotations(anns: list, images: dict[Any, dict], categories: dict, bad) -> dict[Any, list[dict]]:
    """Image id -> its annotations, each checked against its image and the categories."""
    anns_of: dict[Any, list[dict]] = {i: [] for i in images}
    for i, ann in enumerate(anns):
        where = _where("annotations", i, ann)
        if not isinstance(ann, dict):
            raise bad(f"{where}: not an object")
        for key in ("image_id", "category_id", "segmentation"):
            if key not in ann:
                raise bad(f"{where}: no `{key}`")
        img_id, cat = ann["image_id"], ann["category_id"]
        if not (_is_int(img_id) or isinstance(img_id, str)) or img_id not in images:
            also = ""
            if isinstance(img_id, (int, str)) and str(img_id) in {str(k) for k in images}:
                also = " (the images' ids are of another type: numbers and strings differ)"
            raise bad(f"{where}: image_id {img_id!r} is not the id of any image{also}")
        if not _is_int(cat) or cat not in categories:
            raise bad(f"{where}: category_id {cat!r} is not in the file's categories")
        problem = check_segmentation(ann["segmentation"], images[img_id]["height"], images[img_id]["width"])
        if problem:
            raise bad(f"{where}: {problem}")
        anns_of[img_id].append(ann)
    return anns_of


def read_instances(path: str | Path, progress: bool = False) -> Instances:
    """The checked, indexed instances file (:func:`read_json` then :func:`index_instances`)."""
    return index_instances(read_json(path, progress), path)


def annotation_mask(seg, h: int, w: int) -> tuple[np.ndarray | None, int]:
    """(mask or None when it covers nothing, polygons skipped) of one checked ``segmentation``,
    decoded as pycocotools' ``COCO.annToMask``."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6]  # fewer than 3 points cover no pixel
        skipped = len(seg) - len(polygons) if seg else 1
        if not polygons:
            return None, skipped
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    elif isinstance(seg["counts"], list):
        rle, skipped = mask_utils.frPyObjects(seg, h, w), 0
    else:
        rle, skipped = seg, 0
    return mask_utils.decode(rle), skipped


def image_mask(inst: Instances, img: dict) -> tuple[np.ndarray, int]:
    """((H, W) uint8 class-id mask of one image: first instance to cover a pixel keeps it,
    polygons skipped)."""
    h, w = img["height"], img["width"]
    mask = np.zeros((h, w), np.uint8)
    skipped = 0
    for ann in inst.anns_of[img["id"]]:
        m, k = annotation_mask(ann["segmentation"], h, w)
        skipped += k
        if m is not None:
            mask[m.astype(bool) & (mask == 0)] = CLASS_OF_CATEGORY[ann["category_id"]]
    return mask, skipped


def renamed_warning(inst: Instances) -> str | None:
    """One line when the file's category names differ from COCO's for their ids, else None."""
    if not inst.renamed:
        return None
    shown = ", ".join(f"{cid} is {name!r} here, {COCO_NAMES[cid]!r} in COCO" for cid, name in inst.renamed[:3])
    more = f" and {len(inst.renamed) - 3} more" if len(inst.renamed) > 3 else ""
    return (
        f"{inst.path}: {len(inst.renamed)} category names differ from COCO's for their ids ({shown}{more}); "
        "the masks use COCO's classes for these ids: check the file is numbered as COCO is"
    )


def _swap_in(tmp: Path, out: Path) -> int:
    """Put the complete folder ``tmp`` at ``out``; the number of masks ``out`` held before."""
    if not out.exists():
        tmp.rename(out)
        return 0
    before = sum(1 for _ in out.glob("*.png"))
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    out.rename(old / out.name)
    try:
        tmp.rename(out)
    except OSError:
        (old / out.name).rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return before


def write_coco_masks(
    instances: str | Path,
    out_dir: str | Path,
    min_side: int = 256,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> CocoMaskSummary:
    """Write ``out_dir/<image file stem>.png`` (greyscale class ids) for each kept image, and
    nothing else: ``out_dir`` ends holding exactly this run's masks (an earlier run's are
    replaced). Bad inputs are a :class:`DataError` before anything is written. ``warn`` gets
    one-line warnings (default: stderr)."""
    out = check_out_dir(out_dir)
    inst = read_instances(instances, progress)
    message = renamed_warning(inst)
    if message:
        (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(message)
    summary = CocoMaskSummary(0, 0, 0)
    target = out.resolve()  # `--out .` names a folder too
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as e:
        raise DataError(
            f"--out {out}: cannot create a folder in {out.parent} ({e.strerror or e}; name a writable folder)"
        ) from None
    try:
        for img in tqdm(inst.images, desc="COCO masks", unit="img", disable=None if progress else True):
            if min(img["height"], img["width"]) < min_side:
                summary.too_small += 1
                continue
            mask, skipped = image_mask(inst, img)
            summary.short_polygons += skipped
            if not mask.any():
                summary.empty += 1
                continue
            Image.fromarray(mask).save(tmp / f"{Path(img['file_name']).stem}.png")
            summary.written += 1
        tmp.chmod(0o777 & ~_umask())
        summary.replaced = _swap_in(tmp, target)
    except OSError as e:
        raise DataWriteError(
            f"--out {out}: cannot write the masks ({e.strerror or e}); nothing was changed there"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
