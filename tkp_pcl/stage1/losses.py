"""Loss terms of ViT-PCM and TKP-PCL: image BCE on pooled scores, flip equivariance, PCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import flip_patches, normalise_class_maps


def image_loss(image_scores: Tensor, labels: Tensor, eps: float = 1e-6) -> Tensor:
    """Multi-label BCE between pooled probabilities (B, C) in [0, 1] and multi-hot labels (B, C).

    The background channel is part of the label (present in every image), as in ViT-PCM.
    Written out rather than ``F.binary_cross_entropy`` so that a NaN score yields a NaN loss
    (caught by the training loop) instead of an input-range error.
    """
    p = image_scores.float().clamp(eps, 1 - eps)
    y = labels.float()
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()


def equivariance_loss(
    probs: Tensor, probs_flipped: Tensor, labels: Tensor, grid: tuple[int, int], eps: float = 1e-6
) -> Tensor:
    """Horizontal-flip equivariance, both directions.

    ``probs`` (B, N, C) are the patch probabilities of the images and ``probs_flipped`` those of
    the mirrored images. Each view's target is the other view's prediction, without gradient,
    mirrored onto its grid and normalised as in :func:`normalise_class_maps`; the loss is the
    per-patch cross-entropy, averaged over patches and both directions.
    """
    t_for_flipped = flip_patches(normalise_class_maps(probs.detach(), labels), grid)
    t_for_plain = flip_patches(normalise_class_maps(probs_flipped.detach(), labels), grid)
    ce_flipped = -(t_for_flipped * probs_flipped.float().clamp_min(eps).log()).sum(-1).mean()
    ce_plain = -(t_for_plain * probs.float().clamp_min(eps).log()).sum(-1).mean()
    return 0.5 * (ce_flipped + ce_plain)


def patch_labels_from_probs(probs: Tensor, labels: Tensor) -> Tensor:
    """Each patch's predicted class among the image's classes: (B, N, C), (B, C) -> (B, N) long."""
    masked = probs.detach() * labels[:, None, :].to(probs.dtype)
    return masked.argmax(dim=-1)


def patch_contrastive_error(
    embeddings: Tensor,
    patch_labels: Tensor,
    temperature: float = 0.1,
    max_patches: int = 1024,
    form: str = "infonce",
    margin: float = 0.3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Patch contrastive error over the patches of a batch.

    ``embeddings`` (B, N, d) (L2-normalised here); ``patch_labels`` (B, N) class ids, negative
    ids are ignored. Patches with the same label are positives, all others negatives; at most
    ``max_patches`` patches are drawn uniformly (with ``generator``) so the (M, M) similarity
    matrix stays bounded.

    ``form="infonce"``: supervised InfoNCE at ``temperature``, averaged over anchors that have a
    positive. ``form="margin"``: mean (1 - cos) over positive pairs plus mean
    max(0, cos - margin) over negative pairs. Returns a scalar; 0 (with a graph) when no pair
    qualifies.
    """
    d = embeddings.shape[-1]
    emb = F.normalize(embeddings.reshape(-1, d).float(), dim=-1)
    lab = patch_labels.reshape(-1)
    keep = (lab >= 0).nonzero(as_tuple=True)[0]
    if keep.numel() > max_patches:
        pick = torch.randperm(keep.numel(), generator=generator)[:max_patches]
        keep = keep[pick.to(keep.device)]
    emb, lab = emb[keep], lab[keep]
    m = emb.shape[0]
    zero = embeddings.sum() * 0.0
    if m < 2:
        return zero
    sim = emb @ emb.T
    eye = torch.eye(m, dtype=torch.bool, device=emb.device)
    same = (lab[:, None] == lab[None, :]) & ~eye
    if form == "infonce":
        logits = (sim / temperature).masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        n_pos = same.sum(1)
        anchors = n_pos > 0
        if not anchors.any():
            return zero
        pos_mean = (log_prob.masked_fill(~same, 0.0)).sum(1)[anchors] / n_pos[anchors]
        return -pos_mean.mean()
    if form == "margin":
        diff = ~same & ~eye
        terms = []
        if same.any():
            terms.append((1.0 - sim[same]).mean())
        if diff.any():
            terms.append(F.relu(sim[diff] - margin).mean())
        return sum(terms, zero)
    raise ValueError(f"unknown PCE form {form!r}; valid forms: infonce, margin")
