"""Where and how a run executes: device, process group, mixed precision, seeds, batches, and
the one optimizer step (with AMP's gradient scaler) both training stages take."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "amp_setup",
    "cpu_has_native_bf16",
    "distributed",
    "make_loader",
    "optimizer_step",
    "precision",
    "rank_sampler",
    "resolve_device",
    "seed_everything",
    "train_device",
]


def distributed() -> tuple[bool, int, int]:
    """(initialised, rank, world size) of the default process group (torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_device(name: str) -> torch.device:
    """``name`` resolved; under DDP on CUDA, this rank's GPU (``LOCAL_RANK``), made current."""
    device = resolve_device(name)
    if distributed()[0] and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, as Linux lists its
    flags). Elsewhere bf16 is emulated, slower than float32, and autocast stays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_setup(enabled: bool, device: torch.device) -> tuple[bool, torch.dtype, torch.amp.GradScaler]:
    """Autocast where it is native: on CUDA bf16 where supported, else fp16 with a GradScaler;
    on a CPU with native bf16 (:func:`cpu_has_native_bf16`), bf16; float32 otherwise (a no-op
    scaler). Returns (use autocast, its dtype, the scaler)."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return True, dtype, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    use = enabled and device.type == "cpu" and cpu_has_native_bf16()
    return use, torch.bfloat16, torch.amp.GradScaler(device.type, enabled=False)


def precision(enabled: bool, device: torch.device) -> str:
    """What :func:`amp_setup` computes in on ``device``: ``bf16``, ``fp16`` or ``float32``."""
    use, dtype, _ = amp_setup(enabled, device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] if use else "float32"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU generator for the loop's own sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rank_sampler(data: Dataset, seed: int) -> DistributedSampler | None:
    """Under DDP, a shuffling sampler that gives this rank its share of ``data`` (``drop_last``);
    None otherwise."""
    is_dist, rank, world = distributed()
    if not is_dist:
        return None
    return DistributedSampler(data, world, rank, shuffle=True, seed=seed, drop_last=True)


def make_loader(
    data: Dataset,
    batch_size: int,
    generator: torch.Generator,
    workers: int,
    device: torch.device,
    sampler: DistributedSampler | None = None,
) -> DataLoader:
    """Shuffled batches of ``data`` (by ``sampler`` when given, e.g. :func:`rank_sampler`); the
    last partial batch is dropped unless the data holds less than one batch per rank."""
    world = sampler.num_replicas if sampler is not None else 1
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(data) >= batch_size * world,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def optimizer_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sched: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float | None = None,
    params: Iterable[nn.Parameter] = (),
) -> None:
    """Backward through ``scaler`` (AMP), clip the gradient norm of ``params`` to ``grad_clip``
    when set (after unscaling), step the optimizer, the scaler and the lr schedule."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
