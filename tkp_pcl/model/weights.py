"""Backbone weights from a file (``model.pretrained_file``): a timm state dict as ``.pth``/``.pt``
(``torch.load(weights_only=True)``) or ``.safetensors``, checked key by key against the backbone.

As when timm loads its own pretrained weights, the model module's ``checkpoint_filter_fn``
(for ViTs: unwraps ``model``/``state_dict``, resamples position embeddings to the backbone's
grid and a patch embedding to its patch size) runs first, and classifier-head keys the headless
backbone has no use for are dropped; every other key must be present with the backbone's shape.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import WEIGHT_SUFFIXES as SUFFIXES


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the backbone; the message is one
    line naming the path (and the first mismatching key)."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.pth``/``.pt`` (pickled dict, loaded with ``weights_only=True``) or
    ``.safetensors`` file, on the CPU. A ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is
    unwrapped. Raises :class:`WeightsError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise WeightsError(f"{path}: model.pretrained_file must end in {', '.join(SUFFIXES)}")
    if path.is_dir():
        raise WeightsError(f"{path}: model.pretrained_file is a directory, not a weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: model.pretrained_file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as e:  # a file that is not a pickle (a text file: KeyError) fails in any of these
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"{path}: not a readable state dict ({type(e).__name__}: {first})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return sd


def _head_keys(model: nn.Module, sd: dict[str, Tensor], own: dict[str, Tensor]) -> set[str]:
    """Keys of the pretrained classifier head (timm's ``pretrained_cfg['classifier']``) that the
    headless backbone (``num_classes=0``) does not have."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k for k in sd if k not in own and any(k.startswith(f"{h}.") for h in heads)}


def load_pretrained_file(model: nn.Module, path: str | Path) -> None:
    """Load the weights file ``path`` into the timm backbone ``model`` (strict, after timm's own
    checkpoint filter). Raises :class:`WeightsError` naming ``path`` and the first key that is
    missing, unexpected or of another shape."""
    sd = read_state_dict(path)
    name = type(model).__name__
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise WeightsError(f"{path}: does not fit the {name} backbone ({type(e).__name__}: {first})") from None
    own = model.state_dict()
    for k in _head_keys(model, sd, own):
        del sd[k]
    for k, v in own.items():
        if k not in sd:
            raise WeightsError(f"{path}: key {k!r} of the {name} backbone is missing from the file")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise WeightsError(
                f"{path}: key {k!r} has shape {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the {name} backbone"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise WeightsError(f"{path}: key {extra[0]!r} of the file is not in the {name} backbone")
    model.load_state_dict(sd, strict=True)
