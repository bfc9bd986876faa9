import numpy as np
import pytest
import torch

from tkp_pcl.metrics import confusion_matrix, miou


def test_confusion_matrix_by_hand():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    conf = confusion_matrix(pred, target, 3)
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert conf.tolist() == expected.tolist()  # the 255 pixel is skipped
    assert conf.sum() == 5


def test_confusion_matrix_accepts_tensors_and_batches():
    t = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 255]]])
    p = torch.tensor([[[0, 1], [0, 1]], [[2, 1], [0, 0]]])
    assert confusion_matrix(p, t, 3).tolist() == [[2, 0, 0], [1, 2, 0], [0, 1, 1]]


def test_miou_by_hand():
    conf = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    mean, per_class = miou(conf)
    # class 0: TP 1, FP 1 (row 2), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 0/1
    np.testing.assert_allclose(per_class, [1 / 3, 2 / 3, 0.0])
    assert mean == pytest.approx(1 / 3)


def test_classes_absent_from_both_are_excluded():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1])
    mean, per_class = miou(confusion_matrix(pred, target, 4))
    assert mean == 1.0
    assert np.isnan(per_class[2]) and np.isnan(per_class[3])
    # a class predicted but absent from the target counts (IoU 0)
    mean, per_class = miou(confusion_matrix(np.array([0, 0, 1, 3]), target, 4))
    assert per_class[3] == 0.0 and mean == pytest.approx((1 + 0.5 + 0) / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.array([5]), np.array([0]), 2)
