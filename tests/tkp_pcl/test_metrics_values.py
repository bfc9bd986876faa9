"""Confusion matrix and mIoU on multi-pixel inputs worked out by hand: out-of-range ids on
either side refused (the bad pixel is never the only one, so min/max mix-ups show), 255 ignored."""

import numpy as np
import pytest
import torch

# the code under test, imported in one place (module paths move: edit only this line)
from tkp_pcl.metrics import confusion_matrix, miou


def test_confusion_matrix_mixed_array_with_ignore():
    target = np.array([[0, 1, 1, 255], [2, 2, 0, 1], [255, 2, 1, 0]])
    pred = np.array([[0, 1, 2, 2], [2, 0, 0, 1], [1, 2, 1, 1]])
    # pairs (t, p) without the two 255 pixels: (0,0) (1,1) (1,2) (2,2) (2,0) (0,0) (1,1) (2,2) (1,1) (0,1)
    expected = [[2, 1, 0], [0, 3, 1], [1, 0, 2]]
    assert confusion_matrix(pred, target, 3).tolist() == expected
    assert confusion_matrix(torch.tensor(pred), torch.tensor(target), 3).tolist() == expected
    assert confusion_matrix(pred, target, 3).dtype == np.int64
    # a larger num_classes pads with zeros; another ignore id
    four = confusion_matrix(pred, np.where(target == 255, 9, target), 4, ignore_index=9)
    assert four.tolist() == [[2, 1, 0, 0], [0, 3, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    # the ignore id is skipped by the target only: a prediction of 255 where the target is 255 is fine
    assert confusion_matrix(np.array([255, 1]), np.array([255, 1]), 2).tolist() == [[0, 0], [0, 1]]
    assert confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), 2).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("bad", [3, 4, -1, 255])
@pytest.mark.parametrize("where", [0, 5])  # first or last pixel, among valid ones
def test_prediction_out_of_range_is_refused(bad, where):
    target = np.array([0, 1, 2, 2, 1, 0])
    pred = np.array([0, 1, 2, 1, 1, 0])
    pred[where] = bad  # 3 == num_classes is already out of range
    with pytest.raises(ValueError, match=r"^pred has class ids outside \[0, 3\)$"):
        confusion_matrix(pred, target, 3)


@pytest.mark.parametrize("bad", [3, 7, -1, 254])
@pytest.mark.parametrize("where", [0, 5])
def test_target_out_of_range_is_refused(bad, where):
    target = np.array([0, 1, 2, 255, 1, 0])
    target[where] = bad
    pred = np.array([0, 1, 2, 1, 1, 0])
    with pytest.raises(ValueError, match=r"^target has class ids outside \[0, 3\) besides 255$"):
        confusion_matrix(pred, target, 3)


def test_largest_valid_ids_are_counted():
    t = np.array([2, 2, 0, 255])
    p = np.array([2, 0, 2, 0])
    assert confusion_matrix(p, t, 3).tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 1]]


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"^pred shape \(2, 2\) != target shape \(4,\)$"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros(4, int), 2)


def test_miou_by_hand():
    conf = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2]])
    # class 0: TP 2, FP 1 (col) , FN 1 (row) -> 2/4; class 1: TP 3, FP 1, FN 1 -> 3/5;
    # class 2: TP 2, FP 1, FN 1 -> 2/4
    mean, per_class = miou(conf)
    np.testing.assert_allclose(per_class, [0.5, 0.6, 0.5])
    assert mean == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    # asymmetric: FP and FN differ. class 0: TP 4, col sum 4, row sum 6 -> 4/6; class 1: TP 1,
    # col 3, row 1 -> 1/3
    mean, per_class = miou(np.array([[4, 2], [0, 1]]))
    np.testing.assert_allclose(per_class, [4 / 6, 1 / 3])
    assert mean == pytest.approx(0.5)


def test_miou_absent_classes_and_all_absent():
    conf = np.array([[3, 0, 0], [0, 0, 0], [0, 0, 1]])  # class 1 absent from both
    mean, per_class = miou(conf)
    assert per_class[0] == 1.0 and np.isnan(per_class[1]) and per_class[2] == 1.0 and mean == 1.0
    # predicted but absent from the target: IoU 0, counted
    mean, per_class = miou(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(per_class, [0.75, 0.0])
    assert mean == pytest.approx(0.375)
    mean, per_class = miou(np.zeros((2, 2)))
    assert np.isnan(mean) and np.isnan(per_class).all()
    assert isinstance(miou(np.eye(2))[0], float)


def test_tensors_in_a_graph_and_absent_classes_raise_no_warning():
    import warnings

    t = torch.tensor([0.0, 1.0, 1.0], requires_grad=True)  # e.g. a float map still in a graph
    p = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)
    assert confusion_matrix(p, t, 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 for an absent class and the empty mean are expected
        mean, per_class = miou(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]]))
        assert np.isnan(per_class[2]) and mean == pytest.approx((0.5 + 0.5) / 2)
        assert np.isnan(miou(np.zeros((2, 2), dtype=np.int64))[0])
