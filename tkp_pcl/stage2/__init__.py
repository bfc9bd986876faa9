"""Stage 2: a segmentation network trained on the pseudo labels and scored on the val masks."""

from .evaluate import evaluate_segmentation, keep_aspect_size, predict
from .train import PseudoLabelDataset, SegmentResult, Stage2Inputs, make_optimizer, train_segmentation

__all__ = [
    "PseudoLabelDataset",
    "SegmentResult",
    "Stage2Inputs",
    "evaluate_segmentation",
    "keep_aspect_size",
    "make_optimizer",
    "predict",
    "train_segmentation",
]
