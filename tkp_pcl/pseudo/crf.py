"""Dense CRF refinement of pseudo labels (pydensecrf2, imported as ``pydensecrf``)."""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from ..config import CRFConfig


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFConfig) -> np.ndarray:
    """Mean-field dense CRF over K labels.

    ``image`` (H, W, 3) uint8; ``probs`` (K, H, W) per-pixel probabilities (the unary is
    -log p). Gaussian kernel (``gaussian_sxy``, ``gaussian_compat``) and bilateral kernel
    (``bilateral_sxy``, ``bilateral_srgb``, ``bilateral_compat``), ``iterations`` steps.
    Returns (H, W) int64 indices into K.
    """
    k, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probs {(h, w)} differ in size")
    if k == 1:
        return np.zeros((h, w), np.int64)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.require(image, np.uint8, ["C", "W"]),  # pydensecrf refuses read-only buffers
        compat=params.bilateral_compat,
    )
    q = np.asarray(d.inference(params.iterations), dtype=np.float32).reshape(k, h, w)
    return q.argmax(0)


def crf_refine(image: np.ndarray, probs: np.ndarray, classes: np.ndarray, params: CRFConfig) -> np.ndarray:
    """CRF over the image's own classes only.

    ``probs`` (K, H, W) for the class ids ``classes`` (K,) (background and the image's labels);
    returns the refined (H, W) uint8 class-id map.
    """
    return classes.astype(np.uint8)[dense_crf(image, probs, params)]
