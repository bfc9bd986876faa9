"""Images in, model inputs out: resizing, normalisation and the patch tokens of a timm ViT.

Stage 1's patch classifier, pseudo-label generation and stage 2's networks all feed images
through these functions, so an image is prepared the same way wherever it is seen.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["backbone_mean_std", "normalise", "num_prefix_tokens", "patch_tokens", "resize_image"]


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 tensor, (h, w) = ``size`` or (size, size) (bilinear;
    identity at the same size)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)  # copies read-only arrays
    if t.shape[1:] == size:
        return t
    x = F.interpolate(t[None].float(), size=size, mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def backbone_mean_std(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) a timm model was trained with (its ``pretrained_cfg``);
    (0.5, 0.5, 0.5) each when it names none."""
    pc = backbone.pretrained_cfg or {}
    return pc.get("mean", (0.5,) * 3), pc.get("std", (0.5,) * 3)


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images (B, 3, H, W) (scaled to [0, 1]) or float images already in [0, 1] ->
    ``(x - mean) / std`` with ``mean`` and ``std`` of shape (1, 3, 1, 1)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return (x - mean) / std


def num_prefix_tokens(backbone: nn.Module) -> int:
    """How many tokens a timm ViT puts before its patch tokens (class token, registers)."""
    return getattr(backbone, "num_prefix_tokens", 1)


def patch_tokens(backbone: nn.Module, x: Tensor) -> Tensor:
    """Normalised images (B, 3, H, W) -> the ViT's patch tokens (B, N, D), prefix tokens
    dropped; N = (H // patch) * (W // patch)."""
    return backbone.forward_features(x)[:, num_prefix_tokens(backbone) :]
