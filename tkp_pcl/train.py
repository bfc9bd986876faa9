"""Stage 1: train the patch classifier from image-level labels (one readable loop).

The loss is :func:`tkp_pcl.objective.stage1_loss`; which parameters train, the optimizer and
the lr come from :mod:`tkp_pcl.schedule`; device, DDP, AMP and seeds from :mod:`tkp_pcl.runtime`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .config import MethodConfig, TrainConfig
from .data import Splits
from .data.split import Split
from .metrics import miou
from .model import PatchClassifier
from .objective import LOSS_TERMS, stage1_loss
from .pseudo import make_pseudo_labels, resize_image
from .runtime import amp_setup, distributed, resolve_device, seed_everything
from .schedule import build_optimizer, build_scheduler, phase_of, set_trainable

__all__ = [
    "ImageLabelDataset", "NonFiniteLossError", "Stage1Result", "StoppedByRankZero", "load_checkpoint",
    "monitor_miou", "save_checkpoint", "train_stage1",
]  # fmt: skip

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


def save_checkpoint(state: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then an atomic rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class Stage1Result:
    model: PatchClassifier
    history: list[dict[str, float]] = field(default_factory=list)
    device: torch.device = torch.device("cpu")


def monitor_miou(model: PatchClassifier, split: Split, cfg: MethodConfig, device) -> float:
    """Pseudo-label mIoU (no CRF) on a fixed held-out subset; NaN when the subset is empty."""
    if len(split) == 0:
        return float("nan")
    res = make_pseudo_labels(model, split, cfg.pseudo, device, use_crf=False, progress=False)
    return miou(res.conf)[0]


def _make_loader(data: Dataset, tc: TrainConfig, gen: torch.Generator, workers: int, device) -> DataLoader:
    """Shuffled batches; under DDP each rank its share (DistributedSampler, ``drop_last``)."""
    is_dist, rank, world = distributed()
    sampler = None
    if is_dist:
        sampler = DistributedSampler(data, world, rank, shuffle=True, seed=tc.seed, drop_last=True)
    return DataLoader(
        data, batch_size=tc.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=len(data) >= tc.batch_size * world, generator=gen, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )  # fmt: skip


def _enter_phase(model: PatchClassifier, phase: str, tc: TrainConfig, steps: int, device):
    """Set what trains in ``phase``; return (training forward, fresh optimizer, scheduler).
    The forward is wrapped in DDP (under torchrun) and compiled after ``requires_grad`` is set,
    since DDP registers the parameters that train when it is built."""
    set_trainable(model, phase, tc)
    opt = build_optimizer(model, phase, tc)
    net: nn.Module = model
    if distributed()[0]:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    return net, opt, build_scheduler(opt, phase, tc, steps)


def _train_epoch(
    net, model, loader, opt, sched, scaler, cfg: MethodConfig, epoch: int, gen, device, amp
) -> tuple[torch.Tensor, int]:
    """One pass over ``loader``; returns (sums of the :data:`LOSS_TERMS` over images, images)."""
    tc, lc = cfg.train, cfg.loss
    is_dist = distributed()[0]
    model.train()
    sums, n_img = torch.zeros(len(LOSS_TERMS), dtype=torch.float64), 0
    use_pce = lc.pce_weight > 0 and epoch >= lc.pce_warmup_epochs
    for step, (images, labels) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        terms = stage1_loss(
            net, images, labels, cfg, gen, use_pce, model=model, autocast=amp, every_param_in_graph=is_dist
        )
        parts = torch.stack(list(terms.values())).detach().double().cpu()
        if not torch.isfinite(parts).all():
            names = ["total", *(k.removeprefix("loss_") for k in LOSS_TERMS[1:])]
            detail = " ".join(f"{k}={v:.4g}" for k, v in zip(names, parts))
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} step {step}: {detail} (lr={sched.get_last_lr()[0]:.3g})"
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        if tc.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        sums += parts * images.shape[0]
        n_img += images.shape[0]
    if is_dist:  # average over ranks
        totals = torch.cat([sums, torch.tensor([float(n_img)], dtype=torch.float64)])
        dist.all_reduce(totals)
        sums, n_img = totals[:-1], int(totals[-1])
    return sums, n_img


def _checkpoint_state(model, opt, sched, gen, history: list[dict[str, float]]) -> dict:
    keys = list(history[0])
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(), "history_keys": keys,
        "history": torch.tensor([[h[k] for k in keys] for h in history], dtype=torch.float64),
    }  # fmt: skip


def _rank0_decides(stop: bool, epoch: int) -> None:
    """Under DDP: rank 0 broadcasts whether training stops; other ranks raise if it does."""
    if not distributed()[0]:
        return
    flag = torch.tensor([float(stop)])
    dist.broadcast(flag, 0)
    if flag.item() and distributed()[1] > 0:
        raise StoppedByRankZero(f"rank 0 stopped training after epoch {epoch}")


def _train_device(name: str) -> torch.device:
    """``train.device`` resolved; under DDP on CUDA, this rank's GPU (``LOCAL_RANK``)."""
    device = resolve_device(name)
    if distributed()[0] and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def _restore(state: dict | None, model: PatchClassifier, gen: torch.Generator) -> list[dict[str, float]]:
    """Load a checkpoint's weights and RNG states into ``model`` / ``gen``; return its per-epoch
    history (empty without a checkpoint). Optimizer and scheduler are restored by the caller."""
    if state is None:
        return []
    model.load_state_dict(state["model"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]


def train_stage1(
    cfg: MethodConfig,
    splits: Splits,
    on_epoch_end: EpochCallback | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    model: PatchClassifier | None = None,
    checkpoint_meta: dict | None = None,
) -> Stage1Result:
    """Train the patch classifier on ``splits.train`` with image labels only.

    Each batch goes through :func:`tkp_pcl.objective.stage1_loss` (image BCE, equivariance of
    ``loss.eq_form``, PCE, classifier L2). The first ``train.frozen_epochs`` epochs train with
    the backbone frozen, the rest as ``train.trainable_blocks`` says (:mod:`tkp_pcl.schedule`).
    After each epoch: a checkpoint (atomic; training resumes from it when ``checkpoint_path``
    exists) and ``on_epoch_end(epoch, metrics)`` with the losses and ``monitor_pseudo_miou`` on
    the first ``train.monitor_images`` images of ``splits.val``. The callback may raise to stop
    (e.g. to prune). A non-finite loss raises :class:`NonFiniteLossError`. ``model`` replaces
    the freshly built :class:`PatchClassifier` (e.g. to fine-tune).

    Under ``torchrun`` (a process group initialised) the model is wrapped in
    DistributedDataParallel and each rank sees its share of every epoch (DistributedSampler,
    ``batch_size`` per rank); losses are averaged over ranks; rank 0 alone evaluates, writes the
    checkpoint and calls ``on_epoch_end``. Every rank must pass the same ``checkpoint_path``.
    ``checkpoint_meta`` (plain data, e.g. the configuration and its hash) is saved in every
    checkpoint as ``state["meta"]``; the caller checks it before resuming.
    """
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    rank, device = distributed()[1], _train_device(tc.device)
    gen = seed_everything(tc.seed)
    model = (model or PatchClassifier(cfg.model, splits.train.num_classes)).to(device)
    data = ImageLabelDataset(splits.train, cfg.model.img_size)
    loader = _make_loader(data, tc, gen, splits.loader_workers, device)
    use_amp, amp_dtype, scaler = amp_setup(tc.amp, device)
    monitor = splits.val.subset(range(min(tc.monitor_images, len(splits.val))))

    resume = checkpoint_path is not None and Path(checkpoint_path).is_file()
    state = load_checkpoint(checkpoint_path) if resume else None
    history = _restore(state, model, gen)
    start_epoch = len(history)
    phase = phase_of(start_epoch, tc)
    net, opt, sched = _enter_phase(model, phase, tc, len(loader), device)
    if state is not None and start_epoch > 0 and phase_of(start_epoch - 1, tc) == phase:
        opt.load_state_dict(state["optimizer"])  # a new phase starts a fresh optimizer instead
        sched.load_state_dict(state["scheduler"])

    bar = tqdm(range(start_epoch, tc.epochs), desc="stage 1", unit="epoch", disable=not progress or rank > 0)
    for epoch in bar:
        if phase_of(epoch, tc) != phase:
            phase = phase_of(epoch, tc)
            net, opt, sched = _enter_phase(model, phase, tc, len(loader), device)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        amp = (use_amp, amp_dtype)
        sums, n_img = _train_epoch(net, model, loader, opt, sched, scaler, cfg, epoch, gen, device, amp)
        train_time = time.perf_counter() - t0
        metrics = dict(zip(LOSS_TERMS, (sums / max(n_img, 1)).tolist()))
        metrics.update(lr=sched.get_last_lr()[0], epoch_seconds=train_time, images_per_second=n_img / max(train_time, 1e-9),
                       monitor_pseudo_miou=monitor_miou(model, monitor, cfg, device) if rank == 0 else float("nan"))  # fmt: skip
        history.append(metrics)
        if rank > 0:  # rank 0 decides whether training goes on
            _rank0_decides(False, epoch)
            continue
        if checkpoint_path is not None:
            save_checkpoint({**_checkpoint_state(model, opt, sched, gen, history), "meta": checkpoint_meta or {}}, checkpoint_path)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", miou=f"{metrics['monitor_pseudo_miou']:.3f}")
        try:
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        except BaseException:
            _rank0_decides(True, epoch)
            raise
        _rank0_decides(False, epoch)
    return Stage1Result(model=model, history=history, device=device)
