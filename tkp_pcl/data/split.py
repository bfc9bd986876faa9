"""A split of a segmentation data set: images, masks and the image labels derived from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

IGNORE_INDEX = 255


@dataclass
class Split:
    """Indexable images (H, W, 3) uint8 and masks (H, W) uint8 (255 = ignore).

    Image-level labels come from the masks: ``all_labels()[i]`` is a bool (C,) vector, C
    including the background (class 0), which is always set, as in ViT-PCM. ``load_classes(i)``,
    where given, returns the class ids present in image ``i`` instead (e.g. from annotations
    when an image has no mask).
    """

    name: str
    class_names: tuple[str, ...]
    ids: list[str]
    load_image: Callable[[int], np.ndarray]
    load_mask: Callable[[int], np.ndarray]
    _labels: np.ndarray | None = field(default=None, repr=False)
    load_classes: Callable[[int], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def in_memory(
        cls, name: str, class_names: Sequence[str], ids: list[str], images: np.ndarray, masks: np.ndarray
    ) -> Split:
        return cls(name, tuple(class_names), ids, images.__getitem__, masks.__getitem__)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def all_labels(self) -> np.ndarray:
        """(len, C) bool image labels, computed once from the masks."""
        if self._labels is None:
            out = np.zeros((len(self), self.num_classes), bool)
            for i in range(len(self)):
                present = np.unique(self.load_classes(i) if self.load_classes else self.load_mask(i))
                present = present[present != IGNORE_INDEX]
                if present.size and present.max() >= self.num_classes:
                    raise ValueError(
                        f"{self.name}: mask of {self.ids[i]!r} has class {present.max()} "
                        f"but the data set has {self.num_classes} classes"
                    )
                out[i, present] = True
            out[:, 0] = True
            self._labels = out
        return self._labels

    def subset(self, indices: Sequence[int]) -> Split:
        idx = list(indices)
        labels = None if self._labels is None else self._labels[idx]
        return Split(
            self.name,
            self.class_names,
            [self.ids[i] for i in idx],
            lambda j: self.load_image(idx[j]),
            lambda j: self.load_mask(idx[j]),
            labels,
            None if self.load_classes is None else (lambda j: self.load_classes(idx[j])),
        )


def unscored(split: Split) -> Split:
    """``split`` with every mask all-ignore (255) at its image's size: for writing pseudo labels
    of images that have no mask (or are not to be scored) without reading any mask. Needs the
    image labels: taken from ``split`` (computed there once)."""
    shapes: dict[int, tuple[int, int]] = {}

    def load_image(i: int) -> np.ndarray:
        image = split.load_image(i)
        shapes[i] = image.shape[:2]
        return image

    def load_mask(i: int) -> np.ndarray:
        shape = shapes.pop(i) if i in shapes else split.load_image(i).shape[:2]
        return np.full(shape, IGNORE_INDEX, np.uint8)

    return replace(split, load_image=load_image, load_mask=load_mask, _labels=split.all_labels())
