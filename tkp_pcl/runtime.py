"""Where and how a run executes: device, process group, mixed precision, seeds."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


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
