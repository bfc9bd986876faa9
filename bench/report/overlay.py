"""Pseudo-label overlay grids: image | ground truth | pseudo label (| CRF), one row an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tkp_pcl.data import colorize


def blend(image: np.ndarray, label: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8 image with (H, W) label colours laid over it; ignore (255) left grey."""
    colour = colorize(label).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colour * alpha
    out[label == 0] = image[label == 0] * 0.85
    return out.clip(0, 255).astype(np.uint8)


def overlay_grid(rows: list[list[np.ndarray]], cell: int = 128, pad: int = 2) -> np.ndarray:
    """Tile rows of (H, W, 3) panels, each resized (nearest) to ``cell`` x ``cell``."""
    n_cols = max(len(r) for r in rows)
    h = len(rows) * (cell + pad) + pad
    w = n_cols * (cell + pad) + pad
    canvas = np.full((h, w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            im = Image.fromarray(panel).resize((cell, cell), Image.NEAREST)
            y, x = pad + i * (cell + pad), pad + j * (cell + pad)
            canvas[y : y + cell, x : x + cell] = np.asarray(im)
    return canvas


def example_rows(examples: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """image | ground truth | pseudo | pseudo + CRF (where present) for each example."""
    rows = []
    for ex in examples:
        row = [ex["image"], blend(ex["image"], ex["mask"]), blend(ex["image"], ex["pseudo"])]
        if "pseudo_crf" in ex:
            row.append(blend(ex["image"], ex["pseudo_crf"]))
        rows.append(row)
    return rows


def save_png(array: np.ndarray, path: str | Path) -> None:
    Image.fromarray(array).save(path)
