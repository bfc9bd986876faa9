"""The stage-1 objective, composed in one place: training and ``benchmarks/`` both call
:func:`stage1_loss`.

    loss = cls_weight * BCE(pool(view-1 patch probs), labels)
         + eq_weight  * equivariance (``loss.eq_form``: an entry of :data:`EQ_FORMS`)
         + pce_weight * patch contrastive error (from ``pce_warmup_epochs`` on)
         + cls_l2     * sum(classifier weight ** 2)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import MethodConfig
from ..model.classifier import PatchOutput
from .augment import apply_flips, color_jitter, crop_patches, draw_crops, draw_flips, mosaic, view2
from .equivariance import mosaic_equivariance_loss
from .losses import equivariance_loss, image_loss, patch_contrastive_error, patch_labels_from_probs
from .pooling import pool

__all__ = ["EQ_FORMS", "LOSS_TERMS", "Views", "flip_views", "stage1_loss", "vitpcm_views"]

#: The names of the terms :func:`stage1_loss` returns, in order (``loss`` is their weighted sum).
LOSS_TERMS = ("loss", "loss_cls", "loss_eq", "loss_pce", "loss_l2")


@dataclass
class Views:
    """What the forward pass of one equivariance form gives the rest of the loss: the student's
    output ``out``, the patch probabilities ``probs`` (V, N, C) the image loss pools and PCE
    reads, with their ``labels`` (V, C), and the equivariance term (None when not computed)."""

    out: PatchOutput
    probs: Tensor
    labels: Tensor
    eq: Tensor | None


def flip_views(
    net: nn.Module,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: MethodConfig,
    generator: torch.Generator,
    amp: AbstractContextManager,
) -> Views:
    """``flip``: each image mirrored with probability 1/2 (then colour jitter where on); the batch
    and its mirror in one forward, each the other's target (:func:`~.losses.equivariance_loss`).
    Both halves are pooled."""
    b = images.shape[0]
    flip = torch.rand(b, generator=generator).to(images.device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if cfg.train.color_jitter:
        images = color_jitter(images.float() / 255.0, generator)
    with amp:
        out = net(torch.cat([images, images.flip(-1)]))
    probs = out.probs
    eq = equivariance_loss(probs[:b], probs[b:], labels, out.grid) if cfg.loss.eq_weight > 0 else None
    return Views(out, probs, labels.repeat(2, 1), eq)


def vitpcm_views(
    net: nn.Module,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: MethodConfig,
    generator: torch.Generator,
    amp: AbstractContextManager,
) -> Views:
    """``vitpcm``: view 1 is each image with its own flips/transpose; with the equivariance on,
    an eval-mode teacher (``model``) predicts view 1 and the student predicts view 1 and 2x2
    mosaics of half-size views 2 (:mod:`~.equivariance`). Only view 1 is pooled."""
    lc, b = cfg.loss, images.shape[0]
    x = images.float() / 255.0
    x1 = color_jitter(x, generator) if cfg.train.color_jitter else x
    flips1 = draw_flips(b, generator).to(images.device)  # drawn on the CPU generator, moved once
    view1 = apply_flips(x1, flips1)
    if lc.eq_weight <= 0:
        with amp:
            out = net(view1)
        return Views(out, out.probs[:b], labels, None)
    x2 = color_jitter(x, generator) if cfg.train.color_jitter else x
    side = model.grid[0]
    flips2 = draw_flips(b, generator).to(images.device)
    crops = draw_crops(b, side, crop_patches(side), lc.eq_crop_prob, generator)
    mosaics = mosaic(view2(x2, crops, flips2, unit=model.patch[0], size=images.shape[-1] // 2))
    was_training = model.training
    model.eval()
    with torch.no_grad(), amp:
        teacher = model(view1).probs
    model.train(was_training)
    with amp:
        out = net(torch.cat([view1, mosaics]))
    eq = mosaic_equivariance_loss(teacher, out.probs[b:], labels, out.grid, flips1, crops, flips2)
    return Views(out, out.probs[:b], labels, eq)


#: ``loss.eq_form`` -> the forward pass that makes its views and its equivariance term.
EQ_FORMS: dict[str, Callable[..., Views]] = {"flip": flip_views, "vitpcm": vitpcm_views}


def stage1_loss(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: MethodConfig,
    generator: torch.Generator,
    use_pce: bool,
    model: nn.Module | None = None,
    autocast: tuple[bool, torch.dtype] = (False, torch.bfloat16),
    every_param_in_graph: bool = False,
) -> dict[str, Tensor]:
    """The stage-1 loss of one batch and its terms (scalars, see :data:`LOSS_TERMS`).

    ``images`` (B, 3, S, S) uint8 and ``labels`` (B, C) multi-hot, on the model's device;
    ``net`` the training forward (the model, or its DDP / compiled wrapper) in training mode;
    ``model`` the bare :class:`~tkp_pcl.model.PatchClassifier` (the ``vitpcm`` teacher runs it
    in eval mode, the L2 term reads its classifier), default ``net``. All randomness (flips,
    crops, jitter, PCE sampling) comes from ``generator``. ``autocast`` = (enabled, dtype) for
    the forward passes. ``every_param_in_graph`` (DDP) keeps the projection head in the graph
    while PCE is off.
    """
    lc, pc = cfg.loss, cfg.pooling
    model = net if model is None else model
    amp = torch.autocast(images.device.type, dtype=autocast[1]) if autocast[0] else nullcontext()
    v = EQ_FORMS[lc.eq_form](net, model, images, labels, cfg, generator, amp)
    l_cls = image_loss(pool(v.probs, pc.kind, k_ratio=pc.k_ratio, k=pc.k, lse_r=pc.lse_r), v.labels)
    zero = v.probs.new_zeros(())
    # under DDP every parameter needs a gradient: the projection head's is zero while PCE is off
    l_pce = v.out.embeddings.sum() * 0.0 if every_param_in_graph else zero
    if use_pce:
        l_pce = patch_contrastive_error(
            v.out.embeddings[: v.probs.shape[0]],
            patch_labels_from_probs(v.probs, v.labels),
            temperature=lc.pce_temperature,
            max_patches=lc.pce_max_patches,
            form=lc.pce_form,
            margin=lc.pce_margin,
            generator=generator,
        )
    l_eq = zero if v.eq is None else v.eq
    l_l2 = lc.cls_l2 * model.classifier.weight.float().pow(2).sum() if lc.cls_l2 > 0 else zero
    loss = lc.cls_weight * l_cls + lc.eq_weight * l_eq + lc.pce_weight * l_pce + l_l2
    return dict(zip(LOSS_TERMS, (loss, l_cls, l_eq, l_pce, l_l2)))
