"""Operations on patch class maps shared by the equivariance loss and pseudo labels."""

from __future__ import annotations

from torch import Tensor


def normalise_class_maps(probs: Tensor, labels: Tensor, eps: float = 1e-6) -> Tensor:
    """ViT-PCM's map normalisation: mask absent classes, max-normalise each class, renormalise.

    ``probs`` (B, N, C) patch probabilities; ``labels`` (B, C) multi-hot image labels (the
    background channel 0 set). Returns (B, N, C) that sums to 1 over C at each patch.
    """
    masked = probs * labels[:, None, :].to(probs.dtype)
    masked = masked / masked.amax(dim=1, keepdim=True).clamp_min(eps)
    return masked / masked.sum(dim=2, keepdim=True).clamp_min(eps)


def flip_patches(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mirror patch values left-right on their (h, w) grid. (B, N, C) -> (B, N, C), N = h*w."""
    b, n, c = values.shape
    h, w = grid
    return values.reshape(b, h, w, c).flip(2).reshape(b, n, c)


def to_grid(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch values (B, N, C) -> class maps (B, C, h, w)."""
    b, n, c = values.shape
    return values.transpose(1, 2).reshape(b, c, *grid)
