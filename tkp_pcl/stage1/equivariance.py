"""ViT-PCM's scale/crop equivariance: a teacher's patch maps moved onto the student's mosaic.

View 1 of each image is the image with its own flips/transpose (``flips1``); view 2 is the image
cropped (``crops``), resized to half size, and flipped/transposed (``flips2``); four views 2 make
one 2x2 mosaic of the full size, which the student predicts. The teacher predicts view 1 (eval
mode, no gradient). Its maps are moved back to the image's frame (``flips1`` undone), through
view 2's transform at patch level, label-masked and normalised
(:func:`tkp_pcl.stage1.maps.normalise_class_maps`), and the loss is the per-patch cross-entropy
against the student's probabilities in the matching mosaic cell.
"""

from __future__ import annotations

from torch import Tensor

from .augment import apply_flips, crop_resize, invert_flips, unmosaic
from .maps import normalise_class_maps, to_grid


def move_maps(maps: Tensor, flips1: Tensor, crops: Tensor, flips2: Tensor) -> Tensor:
    """View-1 patch maps (B, C, h, h) -> view 2's grid (B, C, h/2, h/2): undo ``flips1``, crop
    (in patches) and resize to half, apply ``flips2``."""
    maps = invert_flips(maps, flips1)
    return apply_flips(crop_resize(maps, crops, unit=1, size=maps.shape[-1] // 2), flips2)


def teacher_targets(
    teacher: Tensor, labels: Tensor, grid: tuple[int, int], flips1: Tensor, crops: Tensor, flips2: Tensor
) -> Tensor:
    """The teacher's view-1 probabilities (B, N, C) on a (h, w) grid -> targets (B, C, h/2, w/2):
    :func:`move_maps`, then mask with ``labels`` (B, C), max-normalise each class over the
    moved map and renormalise (as ViT-PCM, after the transform)."""
    h, w = grid
    maps = move_maps(to_grid(teacher.float(), grid), flips1, crops, flips2)
    b, c = maps.shape[:2]
    flat = normalise_class_maps(maps.flatten(2).transpose(1, 2), labels)  # (B, n, C)
    return flat.transpose(1, 2).reshape(b, c, h // 2, w // 2)


def mosaic_equivariance_loss(
    teacher: Tensor,
    student_mosaics: Tensor,
    labels: Tensor,
    grid: tuple[int, int],
    flips1: Tensor,
    crops: Tensor,
    flips2: Tensor,
    eps: float = 1e-6,
) -> Tensor:
    """Cross-entropy between the teacher's moved maps and the student's mosaic predictions.

    ``teacher`` (B, N, C) view-1 probabilities (no gradient needed); ``student_mosaics``
    (ceil(B/4), N, C) probabilities of the mosaics (same (h, w) grid, h and w even); ``flips1``,
    ``flips2`` (B, 3) bool, ``crops`` (B, 3) in patches, as drawn by :mod:`tkp_pcl.stage1.augment`.
    Returns the mean over the B cells' patches of -sum_c target * log(student); cells that pad
    the last mosaic are left out.
    """
    h, w = grid
    if h % 2 or w % 2 or h != w:
        raise ValueError(f"the vitpcm equivariance needs a square patch grid of even side, got {h}x{w}")
    target = teacher_targets(teacher.detach(), labels, grid, flips1, crops, flips2)
    student = unmosaic(to_grid(student_mosaics, grid), teacher.shape[0])
    return -(target * student.float().clamp_min(eps).log()).sum(1).mean()
