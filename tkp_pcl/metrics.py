"""Segmentation metrics from one confusion matrix (bincount), for pseudo labels and segmentation."""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Confusion matrix ``M[t, p]`` = pixels of true class t predicted as p.

    ``pred`` and ``target`` are integer arrays or tensors of the same shape (any shape, e.g.
    (B, H, W)); pixels whose target is ``ignore_index`` are skipped. Returns an int64 array of
    shape (num_classes, num_classes). Predictions outside [0, num_classes) are an error.
    """
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}")
    p = p.reshape(-1).astype(np.int64)
    t = t.reshape(-1).astype(np.int64)
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target has class ids outside [0, {num_classes}) besides {ignore_index}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred has class ids outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU and per-class IoU of a confusion matrix (C, C).

    IoU_c = TP / (TP + FP + FN). A class absent from both prediction and target (a zero
    row and column) has an undefined IoU: it is NaN in the per-class array and excluded from
    the mean. Returns ``(mean, per_class)``; the mean is NaN only if every class is absent.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    valid = ~np.isnan(iou)
    mean = float(iou[valid].mean()) if valid.any() else float("nan")
    return mean, iou
