"""Data sets: the synthetic scenes and PASCAL VOC 2012, as :class:`Split` objects."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import SyntheticDataConfig, VOCDataConfig
from .split import IGNORE_INDEX, Split
from .synthetic import synthetic_split
from .voc import DataError, voc_split

__all__ = ["IGNORE_INDEX", "DataError", "Split", "Splits", "load_splits"]


@dataclass
class Splits:
    """``train``: stage-1 training images (image labels only are used); ``pseudo``: where pseudo
    labels are made and scored against the masks (WSSS protocol: the train images); ``val``:
    held-out images for per-epoch monitoring and segmentation."""

    train: Split
    pseudo: Split
    val: Split
    loader_workers: int = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def load_splits(cfg: SyntheticDataConfig | VOCDataConfig) -> Splits:
    """Build the three splits a study uses from its data configuration."""
    if isinstance(cfg, SyntheticDataConfig):
        kw = dict(
            seed=cfg.seed, size=cfg.size, max_objects=cfg.max_objects,
            min_size=cfg.min_size, max_size=cfg.max_size, noise=cfg.noise,
        )  # fmt: skip
        train = synthetic_split("train", cfg.n_train, **kw)
        return Splits(train=train, pseudo=train, val=synthetic_split("val", cfg.n_val, **kw))
    kw = dict(mask_dir=cfg.mask_dir, max_images=cfg.max_images)
    return Splits(
        train=voc_split(cfg.root, cfg.train_split, **kw),
        pseudo=voc_split(cfg.root, cfg.pseudo_split, **kw),
        val=voc_split(cfg.root, cfg.val_split, **kw),
        loader_workers=cfg.loader_workers,
    )
