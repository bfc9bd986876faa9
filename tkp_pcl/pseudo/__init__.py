"""Pseudo labels: a trained patch classifier's class maps -> per-pixel labels, optionally refined
by a dense CRF, scored against the masks and written as palette PNGs."""

from .crf import crf_refine, dense_crf
from .labels import PseudoResult, label_batch, make_pseudo_labels, maps_to_labels, predict_class_maps

__all__ = [
    "PseudoResult",
    "crf_refine",
    "dense_crf",
    "label_batch",
    "make_pseudo_labels",
    "maps_to_labels",
    "predict_class_maps",
]
