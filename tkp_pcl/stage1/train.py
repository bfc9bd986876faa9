"""Stage 1: train the patch classifier from image-level labels (one readable loop).

The loss is :func:`tkp_pcl.stage1.objective.stage1_loss`; which parameters train, the optimizer
and the lr come from :mod:`tkp_pcl.stage1.schedule`; device, DDP, AMP, batches and the optimizer
step from :mod:`tkp_pcl.runtime`; the checkpoint from :mod:`tkp_pcl.stage1.checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..config import MethodConfig
from ..data import Split, Splits
from ..imaging import resize_image
from ..metrics import miou
from ..model import PatchClassifier
from ..runtime import amp_setup, distributed, make_loader, optimizer_step, rank_sampler, seed_everything, train_device
from . import checkpoint
from .checkpoint import Checkpoint
from .objective import LOSS_TERMS, stage1_loss
from .schedule import build_optimizer, build_scheduler, phase_of, set_trainable

__all__ = [
    "EpochCallback",
    "ImageLabelDataset",
    "NonFiniteLossError",
    "Stage1Result",
    "StoppedByRankZero",
    "monitor_miou",
    "train_stage1",
]

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where and which term."""


class StoppedByRankZero(RuntimeError):
    """Under DDP: rank 0's epoch callback stopped training (e.g. pruned); the other ranks stop."""


class ImageLabelDataset(Dataset):
    """(3, S, S) uint8 images resized to the model's size and (C,) float image labels."""

    def __init__(self, split: Split, size: int):
        self.split, self.size = split, size
        self.labels = torch.from_numpy(split.all_labels().astype(np.float32))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_image(self.split.load_image(i), self.size), self.labels[i]


@dataclass
class Stage1Result:
    model: PatchClassifier
    history: list[dict[str, float]] = field(default_factory=list)
    device: torch.device = torch.device("cpu")


def monitor_miou(model: PatchClassifier, split: Split, cfg: MethodConfig, device) -> float:
    """Pseudo-label mIoU (no CRF) on a fixed held-out subset; NaN when the subset is empty."""
    # imported here: pseudo labels read the class maps of tkp_pcl.stage1.maps, so importing them
    # when this module loads would be circular
    from ..pseudo.labels import make_pseudo_labels

    if len(split) == 0:
        return float("nan")
    res = make_pseudo_labels(model, split, cfg.pseudo, device, use_crf=False, progress=False)
    return miou(res.conf)[0]


@dataclass
class _Run:
    """What stays the same for every epoch of one training run."""

    cfg: MethodConfig
    model: PatchClassifier
    loader: DataLoader
    gen: torch.Generator
    device: torch.device
    amp: tuple[bool, torch.dtype]  # (autocast on, its dtype)
    scaler: torch.amp.GradScaler
    monitor: Split
    rank: int
    max_steps: int | None = None  # execution limit: steps per epoch (a rehearsal); None: the whole epoch


@dataclass
class _Phase:
    """What a phase (:func:`~.schedule.phase_of`) starts afresh: the training forward (DDP /
    compiled where asked), its optimizer and its lr schedule."""

    name: str
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR


def _enter_phase(run: _Run, name: str) -> _Phase:
    """Set what trains in phase ``name``; a fresh optimizer and scheduler. The forward is wrapped
    in DDP (under torchrun) and compiled after ``requires_grad`` is set, since DDP registers the
    parameters that train when it is built."""
    tc, model = run.cfg.train, run.model
    set_trainable(model, name, tc)
    opt = build_optimizer(model, name, tc)
    net: nn.Module = model
    if distributed()[0]:
        net = DistributedDataParallel(model, device_ids=[run.device] if run.device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    return _Phase(name, net, opt, build_scheduler(opt, name, tc, len(run.loader)))


def _train_epoch(run: _Run, phase: _Phase, epoch: int) -> tuple[torch.Tensor, int]:
    """One pass over the data; returns (sums of the :data:`LOSS_TERMS` over images, images)."""
    tc, lc = run.cfg.train, run.cfg.loss
    is_dist = distributed()[0]
    run.model.train()
    sums, n_img = torch.zeros(len(LOSS_TERMS), dtype=torch.float64), 0
    use_pce = lc.pce_weight > 0 and epoch >= lc.pce_warmup_epochs
    for step, (images, labels) in enumerate(run.loader):
        if run.max_steps is not None and step >= run.max_steps:
            break
        images = images.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        terms = stage1_loss(
            phase.net,
            images,
            labels,
            run.cfg,
            run.gen,
            use_pce,
            model=run.model,
            autocast=run.amp,
            every_param_in_graph=is_dist,
        )
        parts = torch.stack(list(terms.values())).detach().double().cpu()
        if not torch.isfinite(parts).all():
            names = ["total", *(k.removeprefix("loss_") for k in LOSS_TERMS[1:])]
            detail = " ".join(f"{k}={v:.4g}" for k, v in zip(names, parts))
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} step {step}: {detail} (lr={phase.sched.get_last_lr()[0]:.3g})"
            )
        optimizer_step(terms["loss"], phase.opt, run.scaler, phase.sched, tc.grad_clip, run.model.parameters())
        sums += parts * images.shape[0]
        n_img += images.shape[0]
    if is_dist:  # average over ranks
        totals = torch.cat([sums, torch.tensor([float(n_img)], dtype=torch.float64)])
        dist.all_reduce(totals)
        sums, n_img = totals[:-1], int(totals[-1])
    return sums, n_img


def _epoch_metrics(run: _Run, phase: _Phase, epoch: int) -> dict[str, float]:
    """Train one epoch; its mean losses, lr, timing and (rank 0) the monitor mIoU."""
    t0 = time.perf_counter()
    sums, n_img = _train_epoch(run, phase, epoch)
    train_time = time.perf_counter() - t0
    metrics = dict(zip(LOSS_TERMS, (sums / max(n_img, 1)).tolist()))
    metrics.update(
        lr=phase.sched.get_last_lr()[0],
        epoch_seconds=train_time,
        images_per_second=n_img / max(train_time, 1e-9),
        monitor_pseudo_miou=monitor_miou(run.model, run.monitor, run.cfg, run.device)
        if run.rank == 0
        else float("nan"),
    )
    return metrics


def _rank0_decides(stop: bool, epoch: int) -> None:
    """Under DDP: rank 0 broadcasts whether training stops; other ranks raise if it does."""
    if not distributed()[0]:
        return
    flag = torch.tensor([float(stop)])
    dist.broadcast(flag, 0)
    if flag.item() and distributed()[1] > 0:
        raise StoppedByRankZero(f"rank 0 stopped training after epoch {epoch}")


def _prepare(cfg: MethodConfig, splits: Splits, model: PatchClassifier | None, max_steps: int | None) -> _Run:
    """Threads, device, seeds, the model on its device, the batches and the monitor subset."""
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    rank, device = distributed()[1], train_device(tc.device)
    gen = seed_everything(tc.seed)
    model = (model or PatchClassifier(cfg.model, splits.train.num_classes)).to(device)
    data = ImageLabelDataset(splits.train, cfg.model.img_size)
    loader = make_loader(data, tc.batch_size, gen, splits.loader_workers, device, rank_sampler(data, tc.seed))
    use_amp, amp_dtype, scaler = amp_setup(tc.amp, device)
    monitor = splits.val.subset(range(min(tc.monitor_images, len(splits.val))))
    return _Run(cfg, model, loader, gen, device, (use_amp, amp_dtype), scaler, monitor, rank, max_steps)


def _resume(run: _Run, resume: Checkpoint | None) -> tuple[list[dict[str, float]], _Phase]:
    """The history so far and the phase to go on in: from ``resume`` (weights, RNG states, and
    optimizer and scheduler unless a new phase starts now) or from scratch."""
    tc = run.cfg.train
    history = resume.restore(run.model, run.gen) if resume is not None else []
    start = len(history)
    phase = _enter_phase(run, phase_of(start, tc))
    if resume is not None and start > 0 and phase_of(start - 1, tc) == phase.name:
        resume.restore_optimizer(phase.opt, phase.sched)  # a new phase starts a fresh optimizer instead
    return history, phase


def train_stage1(
    cfg: MethodConfig,
    splits: Splits,
    on_epoch_end: EpochCallback | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    model: PatchClassifier | None = None,
    checkpoint_meta: dict | None = None,
    resume: Checkpoint | None = None,
    max_steps: int | None = None,
) -> Stage1Result:
    """Train the patch classifier on ``splits.train`` with image labels only.

    Each batch goes through :func:`~.objective.stage1_loss` (image BCE, equivariance of
    ``loss.eq_form``, PCE, classifier L2). The first ``train.frozen_epochs`` epochs train with
    the backbone frozen, the rest as ``train.trainable_blocks`` says (:mod:`~.schedule`). After
    each epoch: a checkpoint at ``checkpoint_path`` (atomic) and ``on_epoch_end(epoch, metrics)``
    with the losses and ``monitor_pseudo_miou`` on the first ``train.monitor_images`` images of
    ``splits.val``. The callback may raise to stop (e.g. to prune). A non-finite loss raises
    :class:`NonFiniteLossError`. ``model`` replaces the freshly built :class:`PatchClassifier`.

    Resuming: from ``resume``, a checkpoint already read and checked by the caller (the file
    is then not read again); without it, from the file at ``checkpoint_path`` when one exists
    (:func:`~.checkpoint.load`, which raises :class:`~.checkpoint.CheckpointError`).
    ``checkpoint_meta`` (plain data, :func:`~.checkpoint.make_meta`) is saved in every
    checkpoint as ``meta``; the caller checks it before resuming.

    Under ``torchrun`` (a process group initialised) the model is wrapped in
    DistributedDataParallel and each rank sees its share of every epoch (DistributedSampler,
    ``batch_size`` per rank); losses are averaged over ranks; rank 0 alone evaluates, writes the
    checkpoint and calls ``on_epoch_end``. Every rank must pass the same ``checkpoint_path``.
    ``max_steps`` (a rehearsal's execution limit): steps an epoch; None: whole epochs."""
    run, tc = _prepare(cfg, splits, model, max_steps), cfg.train
    if resume is None and checkpoint_path is not None and Path(checkpoint_path).is_file():
        resume = checkpoint.load(checkpoint_path)
    history, phase = _resume(run, resume)
    bar = tqdm(range(len(history), tc.epochs), desc="stage 1", unit="epoch", disable=not progress or run.rank > 0)
    for epoch in bar:
        if phase_of(epoch, tc) != phase.name:
            phase = _enter_phase(run, phase_of(epoch, tc))
        if isinstance(run.loader.sampler, DistributedSampler):
            run.loader.sampler.set_epoch(epoch)
        metrics = _epoch_metrics(run, phase, epoch)
        history.append(metrics)
        if run.rank > 0:  # rank 0 decides whether training goes on
            _rank0_decides(False, epoch)
            continue
        if checkpoint_path is not None:
            state = checkpoint.state_of(run.model, phase.opt, phase.sched, run.gen, history, checkpoint_meta)
            checkpoint.save(state, checkpoint_path)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", miou=f"{metrics['monitor_pseudo_miou']:.3f}")
        try:
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        except BaseException:
            _rank0_decides(True, epoch)
            raise
        _rank0_decides(False, epoch)
    return Stage1Result(model=run.model, history=history, device=run.device)
