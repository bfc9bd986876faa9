"""Stage 2's scoring: class probabilities at each image's own resolution (several scales and
flips where asked), and the confusion matrix over a split's masks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SegmentConfig
from ..data import Split
from ..imaging import resize_image
from ..metrics import confusion_matrix
from ..model import Segmenter

__all__ = ["evaluate_segmentation", "keep_aspect_size", "predict"]


def keep_aspect_size(hw: tuple[int, int], scale: float, multiple: int) -> tuple[int, int]:
    """(H, W) times ``scale``, each rounded to a multiple of ``multiple`` (at least one)."""
    h, w = (max(multiple, round(n * scale / multiple) * multiple) for n in hw)
    return h, w


@torch.no_grad()
def predict(model: Segmenter, image: np.ndarray, scales: list[float], flip: bool, device) -> Tensor:
    """Class probabilities (C, H, W) of one (H, W, 3) image at its own resolution and aspect:
    at each scale (1 = the image's own size) and, with ``flip``, mirrored, the softmax is
    resized back to H x W; the sum over scales and flips is returned."""
    h, w = image.shape[:2]
    total = None
    for sc in scales:
        x = resize_image(image, keep_aspect_size((h, w), sc, model.multiple))[None].to(device)
        views = [x, x.flip(-1)] if flip else [x]
        for k, v in enumerate(views):
            p = model(v).float().softmax(1)
            p = p.flip(-1) if k == 1 else p
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0]
            total = p if total is None else total + p
    return total


def evaluate_segmentation(
    model: Segmenter, split: Split, cfg: SegmentConfig, device, keep_examples: int = 0
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Confusion matrix (C, C) of the model on ``split``'s masks at each image's own size
    (:func:`predict` with ``cfg.eval_scales`` and ``cfg.eval_flip``), and a few examples."""
    model.eval()
    c = split.num_classes
    conf = np.zeros((c, c), np.int64)
    examples = []
    for i in range(len(split)):
        image, mask = split.load_image(i), split.load_mask(i)
        pred = predict(model, image, cfg.eval_scales, cfg.eval_flip, device).argmax(0).cpu().numpy().astype(np.uint8)
        conf += confusion_matrix(pred, mask, c)
        if i < keep_examples:
            examples.append({"image": image, "mask": mask, "pseudo": pred})
    return conf, examples
