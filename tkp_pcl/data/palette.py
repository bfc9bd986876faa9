"""The PASCAL VOC colour map and palette-PNG I/O for label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard bit-interleaved VOC colour map (n, 3) uint8; 255 -> (224, 224, 192)."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def save_label_png(label: np.ndarray, path: str | Path) -> None:
    """Write a (H, W) uint8 label map as a palette PNG (VOC colours), atomically."""
    path = Path(path)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_colormap().reshape(-1).tolist())
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) label ids -> (H, W, 3) uint8 VOC colours."""
    return voc_colormap()[label]
