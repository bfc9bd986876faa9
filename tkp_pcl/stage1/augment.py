"""Image and patch-grid transforms of the training views (pure functions on tensors).

Every geometric function acts the same way on images (B, 3, H, W) and on patch class maps
(B, C, h, w): a crop is given in patches and ``unit`` says how many pixels a patch is (the patch
size for images, 1 for maps), so a teacher's patch map can be moved exactly where the student
sees the corresponding image region. Random draws come from a caller's ``torch.Generator``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

#: ViT-PCM's view-2 crop: 128 px of a 384 px image.
CROP_FRACTION = 128 / 384


def draw_flips(b: int, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """(B, 3) bool: per image, left-right flip, up-down flip, transpose, each with probability p."""
    return torch.rand(b, 3, generator=generator) < p


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.to(a.device).view(-1, *([1] * (a.dim() - 1))), a, b)


def apply_flips(x: Tensor, flips: Tensor) -> Tensor:
    """Per image: left-right flip, then up-down flip, then transpose (H <-> W; needs H == W).
    ``x`` (B, *, H, W), ``flips`` (B, 3) bool from :func:`draw_flips`."""
    x = _where(flips[:, 0], x.flip(-1), x)
    x = _where(flips[:, 1], x.flip(-2), x)
    return _where(flips[:, 2], x.transpose(-1, -2), x)


def invert_flips(x: Tensor, flips: Tensor) -> Tensor:
    """The inverse of :func:`apply_flips` with the same ``flips`` (each step is its own inverse,
    so they are undone in reverse order)."""
    x = _where(flips[:, 2], x.transpose(-1, -2), x)
    x = _where(flips[:, 1], x.flip(-2), x)
    return _where(flips[:, 0], x.flip(-1), x)


def crop_patches(grid: int) -> int:
    """ViT-PCM's crop side (128/384 of the image) on a ``grid``-patch side, in whole patches."""
    return max(1, round(grid * CROP_FRACTION))


def draw_crops(b: int, grid: int, size: int, prob: float, generator: torch.Generator) -> Tensor:
    """(B, 3) long: per image (top, left, side) of a patch-aligned square crop, in patches; side
    0 = no crop (probability 1 - ``prob``). As ViT-PCM's ``bbox_for_crop``: each start is drawn
    uniformly from 0..grid and clipped to grid - side."""
    do = torch.rand(b, generator=generator) < prob
    start = torch.randint(0, grid + 1, (b, 2), generator=generator).clamp_max(grid - size)
    side = torch.where(do, size, 0)
    return torch.cat([start * do[:, None], side[:, None]], dim=1)


def crop_resize(x: Tensor, crops: Tensor, unit: int, size: int) -> Tensor:
    """Crop each image of ``x`` (B, *, H, W) to ``crops`` (B, 3) (in patches of ``unit`` px; side
    0 keeps the whole image) and resize it to (size, size) by bilinear interpolation
    (``align_corners=False``, no antialias: halving is then exactly a 2x2 mean, on pixels and on
    patch maps alike). Returns (B, *, size, size) float. Two interpolations in all: one for the
    uncropped images, one for the crops (all crops of a call have the same side)."""
    x, rows = x.float(), crops.tolist()

    def resize(batch: Tensor) -> Tensor:
        return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)

    out = x.new_empty((*x.shape[:-2], size, size))
    whole = [i for i, (_, _, side) in enumerate(rows) if not side]
    cut = [(i, top, left, s) for i, (top, left, s) in enumerate(rows) if s]
    if whole:
        out[whole] = resize(x[whole])
    if cut:
        parts = [x[i, ..., top * unit : (top + s) * unit, left * unit : (left + s) * unit] for i, top, left, s in cut]
        out[[c[0] for c in cut]] = resize(torch.stack(parts))
    return out


def view2(x: Tensor, crops: Tensor, flips: Tensor, unit: int, size: int) -> Tensor:
    """ViT-PCM's second view of ``x`` (B, *, H, W): crop, resize to ``size``, flips/transpose."""
    return apply_flips(crop_resize(x, crops, unit, size), flips)


def mosaic(cells: Tensor) -> Tensor:
    """Pack (B, *, s, s) cells four at a time into (ceil(B/4), *, 2s, 2s) 2x2 mosaics, row-major
    (cell 4m + k at row k // 2, column k % 2 of mosaic m); a last partial mosaic is filled with
    zeros (see :func:`unmosaic`)."""
    b, *chan, s, _ = cells.shape
    m, k = -(-b // 4), len(chan)
    grid = torch.cat([cells, cells.new_zeros(4 * m - b, *chan, s, s)]).reshape(m, 2, 2, *chan, s, s)
    order = [0, *range(3, 3 + k), 1, 3 + k, 2, 4 + k]  # (m, *chan, row, i, col, j)
    return grid.permute(order).reshape(m, *chan, 2 * s, 2 * s)


def unmosaic(mosaics: Tensor, b: int) -> Tensor:
    """Inverse of :func:`mosaic`: (M, *, 2s, 2s) -> the first ``b`` cells (b, *, s, s)."""
    m, *chan, s2, _ = mosaics.shape
    s, k = s2 // 2, len(chan)
    grid = mosaics.reshape(m, *chan, 2, s, 2, s)
    order = [0, k + 1, k + 3, *range(1, k + 1), k + 2, k + 4]  # (m, row, col, *chan, i, j)
    return grid.permute(order).reshape(4 * m, *chan, s, s)[:b]


def color_jitter(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """ViT-PCM's colour jitter on float images (B, 3, H, W) in [0, 1]: per image, brightness
    (factor in [0.8, 1.2]), contrast ([0.5, 2]), saturation ([0.5, 1.5]) and hue (shift in
    [-0.1, 0.1]), in that order, each with probability ``p`` (torchvision's functional ops)."""
    b = x.shape[0]
    on = torch.rand(b, 4, generator=generator) < p
    u = torch.rand(b, 4, generator=generator)
    lo = torch.tensor([0.8, 0.5, 0.5, -0.1])
    hi = torch.tensor([1.2, 2.0, 1.5, 0.1])
    factor = lo + u * (hi - lo)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for i, img in enumerate(x):
        for j, op in enumerate(ops):
            if on[i, j]:
                img = op(img, float(factor[i, j]))
        out.append(img)
    return torch.stack(out)
