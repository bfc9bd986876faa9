"""The splits a study uses, built from its data configuration."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import CocoDataConfig, SyntheticDataConfig, VOCDataConfig
from .coco import coco_ids, coco_split
from .split import Split
from .synthetic import synthetic_split
from .voc import voc_ids, voc_split

AnyDataConfig = SyntheticDataConfig | VOCDataConfig | CocoDataConfig


@dataclass
class Splits:
    """``train``: stage-1 training images (image labels only are used); ``pseudo``: where pseudo
    labels are made and scored against the masks (WSSS protocol: the train images); ``val``:
    held-out images for per-epoch monitoring and segmentation; ``seg_train``: the images whose
    pseudo labels stage 2 trains on (None: ``train``)."""

    train: Split
    pseudo: Split
    val: Split
    loader_workers: int = 0
    seg_train: Split | None = None

    def __post_init__(self) -> None:
        if self.seg_train is None:
            self.seg_train = self.train

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def seg_train_split_name(cfg: AnyDataConfig) -> str:
    """The name of stage 2's training split (``train`` for the synthetic scenes)."""
    if isinstance(cfg, SyntheticDataConfig):
        return "train"
    return cfg.seg_train_split or cfg.train_split


def split_ids(cfg: VOCDataConfig | CocoDataConfig, split: str) -> list[str]:
    """Image ids of a named split as :func:`load_splits` would use them (``max_images`` applied)."""
    if isinstance(cfg, VOCDataConfig):
        return voc_ids(cfg.root, split)[: cfg.max_images]
    return coco_ids(cfg.root, split)[: cfg.max_images]


def synthetic_kwargs(cfg: SyntheticDataConfig) -> dict:
    """The scene generator's settings of a synthetic data configuration (any stream's)."""
    return dict(
        seed=cfg.seed,
        size=cfg.size,
        max_objects=cfg.max_objects,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        noise=cfg.noise,
    )


def load_splits(cfg: AnyDataConfig) -> Splits:
    """Build the splits a study uses from its data configuration (one object per named split)."""
    if isinstance(cfg, SyntheticDataConfig):
        kw = synthetic_kwargs(cfg)
        train = synthetic_split("train", cfg.n_train, **kw)
        return Splits(train=train, pseudo=train, val=synthetic_split("val", cfg.n_val, **kw))
    cache: dict[str, Split] = {}

    def get(name: str) -> Split:
        if name not in cache:
            if isinstance(cfg, VOCDataConfig):
                cache[name] = voc_split(cfg.root, name, mask_dir=cfg.mask_dir, max_images=cfg.max_images)
            else:
                cache[name] = coco_split(cfg.root, name, max_images=cfg.max_images)
        return cache[name]

    pseudo = get(cfg.pseudo_split)
    if isinstance(cfg, CocoDataConfig) and cfg.pseudo_images is not None:
        pseudo = pseudo.subset(range(min(cfg.pseudo_images, len(pseudo))))
    return Splits(
        train=get(cfg.train_split),
        pseudo=pseudo,
        val=get(cfg.val_split),
        loader_workers=cfg.loader_workers,
        seg_train=get(seg_train_split_name(cfg)),
    )
