"""The stage-1 checkpoint: its layout, writing it, reading it back checked, resuming from it.

One file per run, rewritten atomically after every epoch. It holds what training needs to go
on exactly where it stopped (:data:`KEYS`: weights, optimizer, scheduler, both RNG states, the
per-epoch history) and ``meta``: what it was made with (:func:`make_meta`: the configuration's
hash, the job's key and the configuration itself as JSON), which a harness compares with what
it is about to run before resuming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import MethodConfig

__all__ = [
    "KEYS",
    "META_CONFIG",
    "META_HASH",
    "META_JOB",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "load",
    "make_meta",
    "save",
    "state_of",
    "validate",
]

#: What every checkpoint holds besides ``meta``.
KEYS = ("model", "optimizer", "scheduler", "generator", "torch_rng", "history_keys", "history")
META_HASH, META_JOB, META_CONFIG = "config_hash", "job_key", "config"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from: unreadable, empty, or missing keys.
    ``reason`` says which, in a few words; the message also names the path."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"checkpoint {path}: {reason}")
        self.path, self.reason = Path(path), reason


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a folder that is not writable); the
    message names the path and the operating system's error. Nothing is left half-written."""

    def __init__(self, path: str | Path, cause: BaseException):
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause).strip()
        reason = (reason.splitlines() or [type(cause).__name__])[0][:200]
        super().__init__(getattr(cause, "errno", None), reason)
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return f"checkpoint {self.path}: cannot write ({self.reason})"


def make_meta(config_hash: str, job_key: str, config: MethodConfig) -> dict[str, str]:
    """The ``meta`` a checkpoint is saved with: the configuration's hash (as the caller computes
    it), the job's key and the configuration as JSON."""
    return {META_HASH: config_hash, META_JOB: job_key, META_CONFIG: config.model_dump_json()}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back and checked (:func:`load`); ``state`` is the saved dict."""

    state: dict[str, Any]

    @property
    def history(self) -> list[dict[str, float]]:
        """The metrics of each epoch trained so far, in order."""
        keys = self.state["history_keys"]
        return [dict(zip(keys, row)) for row in self.state["history"].tolist()]

    @property
    def meta(self) -> dict[str, Any]:
        return self.state.get("meta") or {}

    @property
    def config_hash(self) -> str | None:
        """The hash of the configuration it was made with (None when saved without one)."""
        return self.meta.get(META_HASH)

    def restore(self, model: nn.Module, generator: torch.Generator) -> list[dict[str, float]]:
        """Load the weights into ``model`` and the RNG states into ``generator`` and torch's
        global RNG; returns :attr:`history`. Optimizer and scheduler: :meth:`restore_optimizer`."""
        model.load_state_dict(self.state["model"])
        generator.set_state(self.state["generator"])
        torch.set_rng_state(self.state["torch_rng"])
        return self.history

    def restore_optimizer(self, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
        opt.load_state_dict(self.state["optimizer"])
        sched.load_state_dict(self.state["scheduler"])


def state_of(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    history: list[dict[str, float]],
    meta: dict[str, Any] | None,
) -> dict[str, Any]:
    """What :func:`save` writes after an epoch (``history`` non-empty): :data:`KEYS` and ``meta``
    (plain data, ``{}`` when None)."""
    keys = list(history[0])
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history_keys": keys,
        "history": torch.tensor([[h[k] for k in keys] for h in history], dtype=torch.float64),
        "meta": meta or {},
    }


def save(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file, then an atomic rename: never a half-written file.
    A failing write (e.g. a full disk) is a :class:`CheckpointWriteError` naming ``path``; the
    temporary file is removed and a checkpoint already there is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            torch.save(state, writer)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = writer.error if writer is not None and writer.error is not None else e
        raise CheckpointWriteError(path, cause) from e


class _Writer:
    """A file for ``torch.save`` that keeps the first OS error of a write: torch reports it as
    'unexpected pos' or 'basic_ios::clear', without the operating system's words (ENOSPC)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def validate(state: Any, path: str | Path) -> Checkpoint:
    """``state`` as a :class:`Checkpoint`; :class:`CheckpointError` naming the missing keys."""
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(path, f"missing {', '.join(missing)}")
    return Checkpoint(state)


def load(path: str | Path) -> Checkpoint:
    """Read the checkpoint at ``path`` (tensors and plain data only) and :func:`validate` it.
    Raises :class:`CheckpointError` for an empty file, a file torch cannot read, or missing keys."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file makes torch raise one of several kinds
        empty = path.is_file() and path.stat().st_size == 0
        raise CheckpointError(path, "an empty file" if empty else f"not a checkpoint ({type(e).__name__})") from e
    return validate(state, path)
