"""Pseudo labels from patch class maps, optionally refined by a dense CRF, and their mIoU."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..config import PseudoConfig
from ..data import Split, save_label_png
from ..imaging import resize_image
from ..metrics import confusion_matrix
from ..model import PatchClassifier
from ..process import die_with_parent, signals_held
from ..stage1.maps import normalise_class_maps, to_grid
from .crf import crf_refine

__all__ = ["PseudoResult", "label_batch", "make_pseudo_labels", "maps_to_labels", "predict_class_maps"]


@torch.no_grad()
def predict_class_maps(model: PatchClassifier, images: Tensor, labels: Tensor) -> Tensor:
    """Label-restricted, normalised patch class maps.

    ``images`` (B, 3, S, S) uint8 on the model's device; ``labels`` (B, C) bool with the
    background set. Returns (B, C, h, w): absent classes zero, each present class max-normalised,
    renormalised over classes (ViT-PCM).
    """
    out = model(images)
    return to_grid(normalise_class_maps(out.probs, labels.to(out.probs)), out.grid)


def maps_to_labels(maps: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(C, h, w) class maps -> bilinear upsampled probabilities (C, H, W) and argmax (H, W)."""
    up = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return up, up.argmax(0)


def label_batch(
    maps: Tensor, masks: list[np.ndarray], num_classes: int
) -> tuple[list[Tensor], list[np.ndarray], np.ndarray]:
    """Class maps (B, C, h, w) -> per image the upsampled probabilities (C, H, W) and the argmax
    label (H, W) uint8 at its mask's size, and the batch's confusion matrix (C, C) against the
    masks. Same-size masks take one upsampling and one bincount for the whole batch."""
    if len({m.shape for m in masks}) == 1:
        up = F.interpolate(maps, size=masks[0].shape, mode="bilinear", align_corners=False)
        preds = up.argmax(1).numpy().astype(np.uint8)
        return list(up), list(preds), confusion_matrix(preds, np.stack(masks), num_classes)
    probs_all, preds = [], []
    conf = np.zeros((num_classes, num_classes), np.int64)
    for j, mask in enumerate(masks):
        probs, pred = maps_to_labels(maps[j], mask.shape)
        probs_all.append(probs)
        preds.append(pred.numpy().astype(np.uint8))
        conf += confusion_matrix(preds[-1], mask, num_classes)
    return probs_all, preds, conf


def _crf_job(image: np.ndarray, probs: np.ndarray, classes: np.ndarray, params) -> np.ndarray:
    return crf_refine(image, probs, classes, params)


@dataclass
class PseudoResult:
    """Confusion matrices of the pseudo labels against the masks (C, C), without and with CRF,
    and up to ``keep`` examples (image, mask, pseudo, pseudo_crf) for overlays."""

    conf: np.ndarray
    conf_crf: np.ndarray | None
    seconds: float
    examples: list[dict[str, np.ndarray]] = field(default_factory=list)


def _label_dirs(out_dir: str | Path | None, use_crf: bool) -> dict[str, Path]:
    """``out_dir/pseudo`` (and ``out_dir/pseudo_crf`` with the CRF), created; none without ``out_dir``."""
    if out_dir is None:
        return {}
    dirs = {name: Path(out_dir) / name for name in (("pseudo", "pseudo_crf") if use_crf else ("pseudo",))}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _crf_worker_init(parent_pid: int) -> None:
    """A CRF process dies with the process that started it (even a ``kill -9`` of it); it
    ignores Ctrl-C (the parent handles the interrupt and shuts the pool down) and takes the
    default SIGTERM (not the parent's handler, inherited by a fork)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not die_with_parent(parent_pid, signal.SIGKILL):
        os._exit(1)  # the parent is already gone


def _crf_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` CRF processes (fork where available) tied to this process; None for
    one worker (in process)."""
    if workers <= 1:
        return None
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_crf_worker_init, initargs=(os.getpid(),))


class _Labeller:
    """Scores, writes and keeps the pseudo labels of one split, image by image; with the CRF,
    refines each image in ``pool`` (or in process) while the next batch is predicted."""

    def __init__(self, split: Split, cfg: PseudoConfig, out_dir, keep_examples: int, use_crf: bool, progress: bool):
        self.split, self.cfg, self.keep, self.use_crf = split, cfg, keep_examples, use_crf
        c = split.num_classes
        self.conf = np.zeros((c, c), np.int64)
        self.conf_crf = np.zeros((c, c), np.int64) if use_crf else None
        self.dirs = _label_dirs(out_dir, use_crf)
        self.examples: list[dict[str, np.ndarray]] = []
        self.all_labels = split.all_labels()
        self.pool = _crf_pool(cfg.workers) if use_crf else None
        self.pending: deque[tuple[int, np.ndarray, Future | np.ndarray]] = deque()
        self.bar = tqdm(total=len(split), desc=f"pseudo labels {split.name}", disable=not progress, leave=False)

    def batch(self, model: PatchClassifier, idx: range, size: int, device) -> None:
        """Predict, score and write the images ``idx``; queue their CRF jobs."""
        split, c = self.split, self.split.num_classes
        imgs = [split.load_image(i) for i in idx]
        batch = torch.stack([resize_image(im, size) for im in imgs]).to(device)
        labels = torch.from_numpy(self.all_labels[list(idx)]).to(device)
        maps = predict_class_maps(model, batch, labels).float().cpu()
        masks = [split.load_mask(i) for i in idx]
        probs_all, preds, batch_conf = label_batch(maps, masks, c)
        self.conf += batch_conf
        for j, i in enumerate(idx):
            mask, pred = masks[j], preds[j]
            if "pseudo" in self.dirs:
                save_label_png(pred, self.dirs["pseudo"] / f"{split.ids[i]}.png")
            if i < self.keep:
                self.examples.append({"image": imgs[j], "mask": mask, "pseudo": pred})
            if not self.use_crf:
                self.bar.update(1)
                continue
            classes = np.flatnonzero(self.all_labels[i])
            args = (imgs[j], probs_all[j].numpy()[classes], classes, self.cfg.crf)
            if self.pool:
                with signals_held():  # may start a pool process
                    job = self.pool.submit(_crf_job, *args)
            else:
                job = _crf_job(*args)
            self.pending.append((i, mask, job))
            while len(self.pending) > 4 * self.cfg.workers:
                self._finish(*self.pending.popleft())

    def _finish(self, i: int, mask: np.ndarray, job) -> None:
        refined = job.result() if isinstance(job, Future) else job
        self.conf_crf[:] += confusion_matrix(refined, mask, self.split.num_classes)
        if "pseudo_crf" in self.dirs:
            save_label_png(refined, self.dirs["pseudo_crf"] / f"{self.split.ids[i]}.png")
        if i < self.keep:
            self.examples[i]["pseudo_crf"] = refined
        self.bar.update(1)

    def drain(self) -> None:
        """Wait for every queued CRF job, in order."""
        while self.pending:
            self._finish(*self.pending.popleft())

    def close(self) -> None:
        self.bar.close()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def make_pseudo_labels(
    model: PatchClassifier,
    split: Split,
    cfg: PseudoConfig,
    device: torch.device | str = "cpu",
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    keep_examples: int = 0,
    use_crf: bool | None = None,
    progress: bool = True,
) -> PseudoResult:
    """Pseudo labels for every image of ``split``, scored against its masks.

    Images are resized to ``cfg.input_size`` (default: the model's ``img_size``; another size
    runs the ViT on that grid with resampled position embeddings), predicted, maps restricted to
    the image's labels + background, upsampled to the image's own size, argmax. With the CRF on, each
    image is refined in a pool of ``cfg.workers`` processes while the model predicts the next
    batch. With ``out_dir``, label maps are written as palette PNGs under ``out_dir/pseudo`` and
    ``out_dir/pseudo_crf``.
    """
    t0 = time.perf_counter()
    use_crf = cfg.crf.enabled if use_crf is None else use_crf
    size = cfg.input_size or model.cfg.img_size
    if size % model.patch[0] or size % model.patch[1]:
        raise ValueError(f"pseudo.input_size ({size}) must be a multiple of the patch size ({model.patch[0]})")
    model.eval()
    labeller = _Labeller(split, cfg, out_dir, keep_examples, use_crf, progress)
    try:
        for start in range(0, len(split), batch_size):
            labeller.batch(model, range(start, min(start + batch_size, len(split))), size, device)
        labeller.drain()
    finally:
        labeller.close()
    return PseudoResult(labeller.conf, labeller.conf_crf, time.perf_counter() - t0, labeller.examples)
