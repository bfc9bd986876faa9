"""Pooling of patch scores into image scores: pure functions, one dict.

Every function maps ``scores`` of shape (B, N, C) (N patches, C classes) to (B, C).
The study key ``pooling.kind`` names an entry of :data:`POOLINGS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def resolve_k(num_patches: int, k_ratio: float = 0.1, k: int | None = None) -> int:
    """K of top-K pooling: ``k`` if given, else ``max(1, round(k_ratio * N))``; at most N."""
    if k is None:
        if not 0 < k_ratio <= 1:
            raise ValueError(f"k_ratio must be in (0, 1], got {k_ratio}")
        k = max(1, round(k_ratio * num_patches))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), num_patches)


def max_pool(scores: Tensor, **_: object) -> Tensor:
    """ViT-PCM's global max pooling: ``y_c = max_i Z_ic``. (B, N, C) -> (B, C)."""
    return scores.amax(dim=1)


def topk_pool(scores: Tensor, k_ratio: float = 0.1, k: int | None = None, **_: object) -> Tensor:
    """TKP: mean of the K largest patch scores of each class. (B, N, C) -> (B, C).

    K = 1 is :func:`max_pool`; K = N is :func:`mean_pool`.
    """
    kk = resolve_k(scores.shape[1], k_ratio, k)
    if kk == 1:
        return scores.amax(dim=1)
    return scores.topk(kk, dim=1).values.mean(dim=1)


def mean_pool(scores: Tensor, **_: object) -> Tensor:
    """Global average pooling over patches. (B, N, C) -> (B, C)."""
    return scores.mean(dim=1)


def lse_pool(scores: Tensor, lse_r: float = 5.0, **_: object) -> Tensor:
    """Log-mean-exp with sharpness r: ``(1/r) log(mean_i exp(r Z_ic))``. (B, N, C) -> (B, C).

    Lies between the mean (r -> 0) and the max (r -> inf), so it stays in [0, 1] for
    probabilities.
    """
    n = scores.shape[1]
    return (torch.logsumexp(lse_r * scores, dim=1) - math.log(n)) / lse_r


POOLINGS: dict[str, Callable[..., Tensor]] = {
    "max": max_pool,
    "topk": topk_pool,
    "mean": mean_pool,
    "lse": lse_pool,
}


def pool(scores: Tensor, kind: str = "topk", **params: object) -> Tensor:
    """Pool patch scores (B, N, C) into image scores (B, C) with the pooling named ``kind``.

    ``params`` go to the pooling function (``k_ratio``, ``k`` for ``topk``; ``lse_r`` for ``lse``).
    """
    try:
        fn = POOLINGS[kind]
    except KeyError:
        raise ValueError(f"unknown pooling kind {kind!r}; valid kinds: {', '.join(sorted(POOLINGS))}") from None
    if scores.dim() != 3:
        raise ValueError(f"scores must be (B, N, C), got shape {tuple(scores.shape)}")
    return fn(scores, **params)
