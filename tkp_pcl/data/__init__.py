"""Data sets: the synthetic scenes, PASCAL VOC 2012 and MS COCO 2014, as :class:`Split` objects."""

from .coco import COCO_CLASSES, coco_ids, coco_split
from .errors import DataError
from .loading import Splits, load_splits, seg_train_split_name, split_ids, synthetic_kwargs
from .palette import colorize, save_label_png, voc_colormap
from .split import IGNORE_INDEX, Split, unscored
from .synthetic import synthetic_split
from .voc import voc_ids, voc_split

__all__ = [
    "COCO_CLASSES",
    "IGNORE_INDEX",
    "DataError",
    "Split",
    "Splits",
    "coco_ids",
    "coco_split",
    "colorize",
    "load_splits",
    "save_label_png",
    "seg_train_split_name",
    "split_ids",
    "synthetic_kwargs",
    "synthetic_split",
    "unscored",
    "voc_colormap",
    "voc_ids",
    "voc_split",
]
