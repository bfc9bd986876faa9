"""Stage 2: a segmentation network trained on pseudo labels, then scored on the val masks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..config import ModelConfig, SegmentConfig
from ..data import IGNORE_INDEX, Split
from ..model import Segmenter
from ..runtime import amp_setup, make_loader, optimizer_step, resolve_device, seed_everything
from ..stage1.schedule import lr_factor
from .evaluate import evaluate_segmentation

__all__ = ["PseudoLabelDataset", "SegmentResult", "Stage2Inputs", "make_optimizer", "train_segmentation"]


def make_optimizer(model: Segmenter, cfg: SegmentConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum (DeepLab), over :meth:`Segmenter.param_groups`."""
    groups = model.param_groups(cfg.lr, cfg.head_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class PseudoLabelDataset(Dataset):
    """Images of ``split`` with the pseudo-label PNGs in ``label_dir`` (named by image id),
    rescaled by a random factor in ``scale`` of their own size, cropped to S (labels padded with
    255) and mirrored: (3, S, S) uint8, (S, S) long."""

    def __init__(self, split: Split, label_dir: Path, size: int, scale: tuple[float, float]):
        self.split, self.label_dir, self.size, self.scale = split, Path(label_dir), size, scale

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path = self.label_dir / f"{self.split.ids[i]}.png"
        if not path.is_file():
            raise FileNotFoundError(f"pseudo label {path} does not exist; make the pseudo labels first")
        img = Image.fromarray(self.split.load_image(i))
        lab = Image.open(path)
        f = float(torch.empty(1).uniform_(*self.scale))
        w, h = img.size
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        img = torch.from_numpy(np.array(img.resize((nw, nh), Image.BILINEAR))).permute(2, 0, 1)
        lab = torch.from_numpy(np.asarray(lab.resize((nw, nh), Image.NEAREST)).astype(np.int64))
        out_img = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        out_lab = torch.full((self.size, self.size), IGNORE_INDEX, dtype=torch.long)
        y0 = int(torch.randint(0, max(0, nh - self.size) + 1, ()))
        x0 = int(torch.randint(0, max(0, nw - self.size) + 1, ()))
        ch, cw = min(self.size, nh), min(self.size, nw)
        out_img[:, :ch, :cw] = img[:, y0 : y0 + ch, x0 : x0 + cw]
        out_lab[:ch, :cw] = lab[y0 : y0 + ch, x0 : x0 + cw]
        if torch.rand(()) < 0.5:
            out_img, out_lab = out_img.flip(-1), out_lab.flip(-1)
        return out_img, out_lab


@dataclass(frozen=True)
class Stage2Inputs:
    """What one stage-2 run trains on and is scored on, and how it runs: the ``train`` images
    with their pseudo labels in ``label_dir`` (PNGs named by image id), the ``val`` split whose
    masks score it, the ``seed`` of weights and sampling, the ``device`` (``auto``: CUDA if
    available) and the number of data-loading processes."""

    train: Split
    label_dir: str | Path
    val: Split
    seed: int = 0
    device: str = "auto"
    loader_workers: int = 0


@dataclass
class SegmentResult:
    model: Segmenter
    conf: np.ndarray
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    examples: list[dict[str, np.ndarray]] = field(default_factory=list)


def train_segmentation(
    cfg: SegmentConfig,
    model_cfg: ModelConfig,
    inputs: Stage2Inputs,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    keep_examples: int = 0,
    progress: bool = True,
    max_steps: int | None = None,
) -> SegmentResult:
    """Train on ``inputs.train`` images with their pseudo labels (cross-entropy, 255 ignored,
    ``cfg.optimizer`` with a poly schedule), then score on ``inputs.val``'s masks (in float32) at
    their own resolution, keeping ``keep_examples`` examples. Each epoch's history has its loss
    and its training seconds. ``max_steps`` (an execution limit, e.g. for a rehearsal): each
    epoch stops after that many steps."""
    t0 = time.perf_counter()
    dev = resolve_device(inputs.device)
    gen = seed_everything(inputs.seed)
    size = cfg.crop_size or model_cfg.img_size
    model = Segmenter(cfg, model_cfg, inputs.train.num_classes).to(dev)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if cfg.compile else model
    use_amp, amp_dtype, scaler = amp_setup(cfg.amp, dev)
    data = PseudoLabelDataset(inputs.train, Path(inputs.label_dir), size, (cfg.scale_min, cfg.scale_max))
    loader = make_loader(data, cfg.batch_size, gen, inputs.loader_workers, dev)
    opt = make_optimizer(model, cfg)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, 0, "poly"))
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="stage 2", disable=not progress, unit="epoch"):
        model.train()
        loss_sum, n, t_epoch = torch.zeros((), device=dev), 0, time.perf_counter()
        for step, (images, labels) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            images = images.to(dev, non_blocking=True).to(memory_format=fmt)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                logits = net(images)
            loss = F.cross_entropy(logits.float(), labels.to(dev), ignore_index=IGNORE_INDEX)
            optimizer_step(loss, opt, scaler, sched)
            loss_sum += loss.detach() * images.shape[0]  # no host sync per step
            n += images.shape[0]
        history.append({"seg_loss": float(loss_sum) / max(n, 1), "seg_epoch_seconds": time.perf_counter() - t_epoch})
        if on_epoch_end is not None:
            on_epoch_end(epoch, history[-1])
    conf, examples = evaluate_segmentation(model, inputs.val, cfg, dev, keep_examples)
    return SegmentResult(model, conf, time.perf_counter() - t0, history, examples)
