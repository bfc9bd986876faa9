"""Stage 1: train the patch classifier from image-level labels (one readable loop)."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .config import MethodConfig
from .data import Splits
from .data.split import Split
from .losses import equivariance_loss, image_loss, patch_contrastive_error, patch_labels_from_probs
from .metrics import confusion_matrix, miou
from .model import PatchClassifier
from .pooling import pool
from .pseudo import make_pseudo_labels, resize_image

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where and which term."""


class StoppedByRankZero(RuntimeError):
    """Under DDP: rank 0's epoch callback stopped training (e.g. pruned); the other ranks stop."""


def distributed() -> tuple[bool, int, int]:
    """(initialised, rank, world size) of the default process group (torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


class ImageLabelDataset(Dataset):
    """(3, S, S) uint8 images resized to the model's size and (C,) float image labels."""

    def __init__(self, split: Split, size: int):
        self.split, self.size = split, size
        self.labels = torch.from_numpy(split.all_labels().astype(np.float32))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_image(self.split.load_image(i), self.size), self.labels[i]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_setup(enabled: bool, device: torch.device) -> tuple[bool, torch.dtype, torch.amp.GradScaler]:
    """Autocast on CUDA only: bf16 where supported, else fp16 with a GradScaler (a no-op scaler
    otherwise). Returns (use autocast, its dtype, the scaler)."""
    use = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    return use, dtype, torch.amp.GradScaler("cuda", enabled=use and dtype == torch.float16)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU generator for the loop's own sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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

    Each batch is seen as itself and mirrored (one forward of 2B images): image BCE on the
    pooled scores of both views, flip equivariance between them, PCE on the patch embeddings.
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
    tc, lc, pc = cfg.train, cfg.loss, cfg.pooling
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    is_dist, rank, world = distributed()
    device = resolve_device(tc.device)
    if is_dist and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    gen = seed_everything(tc.seed)
    model = (model or PatchClassifier(cfg.model, splits.train.num_classes)).to(device)
    data = ImageLabelDataset(splits.train, cfg.model.img_size)
    workers = splits.loader_workers
    sampler = DistributedSampler(data, world, rank, shuffle=True, seed=tc.seed, drop_last=True) if is_dist else None
    loader = DataLoader(
        data, batch_size=tc.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=len(data) >= tc.batch_size * world, generator=gen, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total = tc.epochs * len(loader)
    warmup = round(tc.warmup_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, tc.schedule)
    )
    use_amp, amp_dtype, scaler = amp_setup(tc.amp, device)
    monitor = splits.val.subset(range(min(tc.monitor_images, len(splits.val))))
    pool_args = {"k_ratio": pc.k_ratio, "k": pc.k, "lse_r": pc.lse_r}

    history: list[dict[str, float]] = []
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
        start_epoch = len(history)

    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if is_dist else model
    if tc.compile:
        net = torch.compile(net)
    bar = tqdm(range(start_epoch, tc.epochs), desc="stage 1", disable=not progress or rank > 0, unit="epoch")
    for epoch in bar:
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64)
        n_img = 0
        use_pce = lc.pce_weight > 0 and epoch >= lc.pce_warmup_epochs
        for step, (images, labels) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            flip = torch.rand(images.shape[0], generator=gen).to(device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            b = images.shape[0]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = net(torch.cat([images, images.flip(-1)]))
            probs, both_labels = out.probs, labels.repeat(2, 1)
            l_cls = image_loss(pool(probs, pc.kind, **pool_args), both_labels)
            zero = probs.new_zeros(())
            l_eq = (
                equivariance_loss(probs[:b], probs[b:], labels, out.grid) if lc.eq_weight > 0 else zero
            )
            # under DDP every parameter needs a gradient: the projection head's is zero while PCE is off
            l_pce = out.embeddings.sum() * 0.0 if is_dist else zero
            if use_pce:
                l_pce = patch_contrastive_error(
                    out.embeddings, patch_labels_from_probs(probs, both_labels),
                    temperature=lc.pce_temperature, max_patches=lc.pce_max_patches,
                    form=lc.pce_form, margin=lc.pce_margin, generator=gen,
                )  # fmt: skip
            loss = lc.cls_weight * l_cls + lc.eq_weight * l_eq + lc.pce_weight * l_pce
            parts = torch.stack([loss, l_cls, l_eq, l_pce]).detach().double().cpu()
            if not torch.isfinite(parts).all():
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch} step {step}: total={parts[0]:.4g} "
                    f"cls={parts[1]:.4g} eq={parts[2]:.4g} pce={parts[3]:.4g} (lr={sched.get_last_lr()[0]:.3g})"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            sums += parts * b
            n_img += b
        if is_dist:  # average over ranks
            totals = torch.cat([sums, torch.tensor([float(n_img)], dtype=torch.float64)])
            dist.all_reduce(totals)
            sums, n_img = totals[:4], int(totals[4])
        train_time = time.perf_counter() - t0
        means = (sums / max(n_img, 1)).tolist()
        metrics = {
            "loss": means[0], "loss_cls": means[1], "loss_eq": means[2], "loss_pce": means[3],
            "lr": sched.get_last_lr()[0], "epoch_seconds": train_time,
            "images_per_second": n_img / max(train_time, 1e-9),
            "monitor_pseudo_miou": monitor_miou(model, monitor, cfg, device) if rank == 0 else float("nan"),
        }  # fmt: skip
        history.append(metrics)
        if rank > 0:  # rank 0 decides whether training goes on
            stop = torch.zeros(1)
            dist.broadcast(stop, 0)
            if stop.item():
                raise StoppedByRankZero(f"rank 0 stopped training after epoch {epoch}")
            continue
        if checkpoint_path is not None:
            keys = list(history[0])
            save_checkpoint(
                {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "history_keys": keys,
                    "history": torch.tensor([[h[k] for k in keys] for h in history], dtype=torch.float64),
                    "meta": checkpoint_meta or {},
                },
                checkpoint_path,
            )  # fmt: skip
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", miou=f"{metrics['monitor_pseudo_miou']:.3f}")
        try:
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        except BaseException:
            if is_dist:
                dist.broadcast(torch.ones(1), 0)
            raise
        if is_dist:
            dist.broadcast(torch.zeros(1), 0)
    return Stage1Result(model=model, history=history, device=device)
