"""Stage-1 optimisation schedule: which parameters train in which epoch, the optimizer, the lr.

Two phases, each a function of the epoch alone (so a resumed run lands in the right one):
``frozen`` (the first ``train.frozen_epochs``: the backbone frozen, a constant ``frozen_lr``)
and ``main`` (the rest: the whole backbone, or only its last ``trainable_blocks`` blocks and
final norm, at ``lr`` with warm-up and ``schedule``). Each phase starts a fresh optimizer, as
ViT-PCM compiles a new Adam after its warm-up epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine / poly(0.9) decay / constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if schedule == "poly":
        return max(0.0, 1 - t) ** 0.9
    return 1.0


def phase_of(epoch: int, tc: TrainConfig) -> str:
    """``frozen`` during the first ``frozen_epochs`` epochs, ``main`` after."""
    return "frozen" if epoch < tc.frozen_epochs else "main"


def set_trainable(model: nn.Module, phase: str, tc: TrainConfig) -> None:
    """Set ``requires_grad`` of ``model.backbone`` (a timm ViT) for ``phase``; the rest of the
    model (HV-BiLSTM, classifier, projection) always trains.

    ``frozen``: no backbone parameter trains. ``main`` with ``trainable_blocks`` N: only
    ``backbone.blocks[-N:]`` and ``backbone.norm``; the patch embedding, position embedding,
    class token and earlier blocks stay frozen. ``None``: the whole backbone trains.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    backbone = model.backbone
    if phase == "main" and tc.trainable_blocks is None:
        return
    for p in backbone.parameters():
        p.requires_grad_(False)
    if phase == "main" and tc.trainable_blocks:
        blocks = list(backbone.blocks)
        for module in [*blocks[len(blocks) - tc.trainable_blocks :], getattr(backbone, "norm", None)]:
            for p in module.parameters() if module is not None else ():
                p.requires_grad_(True)


def build_optimizer(model: nn.Module, phase: str, tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam (no weight decay) or AdamW (``weight_decay``) over the parameters that train in
    ``phase`` (call :func:`set_trainable` first), at ``frozen_lr`` or ``lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = tc.frozen_lr if phase == "frozen" else tc.lr
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=lr, weight_decay=tc.weight_decay)


def build_scheduler(
    opt: torch.optim.Optimizer, phase: str, tc: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant lr in the ``frozen`` phase; in ``main``, :func:`lr_factor` over its own steps
    (``epochs - frozen_epochs`` epochs, ``warmup_epochs`` of linear warm-up)."""
    if phase == "frozen":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    total = (tc.epochs - tc.frozen_epochs) * steps_per_epoch
    warmup = round(tc.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, tc.schedule))
