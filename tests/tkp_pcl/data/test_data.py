import numpy as np
import pytest

from tkp_pcl.config import SyntheticDataConfig, VOCDataConfig
from tkp_pcl.data import DataError, load_splits
from tkp_pcl.data.synthetic import CLASS_NAMES, synthetic_split
from tkp_pcl.data.voc import VOC_CLASSES, voc_split


def test_synthetic_same_seed_same_bytes_other_seed_differs():
    a, b = synthetic_split("train", 6, seed=3), synthetic_split("train", 6, seed=3)
    c = synthetic_split("train", 6, seed=4)
    for i in range(6):
        assert a.load_image(i).tobytes() == b.load_image(i).tobytes()
        assert a.load_mask(i).tobytes() == b.load_mask(i).tobytes()
    assert any(a.load_image(i).tobytes() != c.load_image(i).tobytes() for i in range(6))
    val = synthetic_split("val", 6, seed=3)
    assert all(val.load_image(i).tobytes() != a.load_image(i).tobytes() for i in range(6))


def test_synthetic_labels_match_masks_and_data_is_varied():
    s = synthetic_split("train", 200, seed=0)
    labels = s.all_labels()
    assert labels.shape == (200, len(CLASS_NAMES)) and labels[:, 0].all()
    sizes, multi = [], 0
    for i in range(200):
        m = s.load_mask(i)
        present = set(np.unique(m).tolist())
        assert set(np.flatnonzero(labels[i])) == present | {0}
        multi += len(present - {0}) > 1
        for c in present - {0}:
            sizes.append((m == c).sum())
    assert (labels[:, 1:].sum(0) > 20).all()  # every class appears
    assert multi > 40  # many images have several classes
    assert np.percentile(sizes, 90) > 5 * np.percentile(sizes, 10)  # very different sizes


def test_synthetic_markers_are_small_and_pairs_share_bodies():
    """The discriminative part is a small fraction of each object: the test of the design."""
    s = synthetic_split("train", 50, seed=1)
    marker_colours = {1: (225, 40, 40), 2: (40, 70, 230)}
    fracs = []
    for i in range(50):
        img, m = s.load_image(i).astype(int), s.load_mask(i)
        for c, col in marker_colours.items():
            obj = m == c
            if obj.sum() > 100:
                near = (np.abs(img - np.array(col)).sum(-1) < 90) & obj
                fracs.append(near.sum() / obj.sum())
    assert fracs and 0.0 < np.median(fracs) < 0.2


def test_voc_round_trip(voc_root):
    root, masks = voc_root
    train = voc_split(root, "train")
    assert train.class_names == VOC_CLASSES and len(train) == 3
    for i, name in enumerate(train.ids):
        assert np.array_equal(train.load_mask(i), masks[name])
        assert train.load_image(i).shape[:2] == masks[name].shape
    labels = train.all_labels()
    assert sorted(np.flatnonzero(labels[0])) == [0, 5, 9, 11, 15]  # the real VOC image
    assert sorted(np.flatnonzero(labels[1])) == [0, 1]  # 255 is not a class
    splits = load_splits(VOCDataConfig(root=str(root)))
    assert len(splits.train) == 4 and len(splits.pseudo) == 3 and len(splits.val) == 1


def test_voc_greyscale_aug_masks(voc_root, tmp_path):
    from PIL import Image

    root, masks = voc_root
    (root / "SegmentationClassAug").mkdir()
    for name, m in masks.items():
        Image.fromarray(m, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
    s = voc_split(root, "train_aug")  # auto picks SegmentationClassAug
    for i, name in enumerate(s.ids):
        assert np.array_equal(s.load_mask(i), masks[name])


def test_voc_missing_paths_are_named(tmp_path, voc_root):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        voc_split(tmp_path / "nope", "train")
    root, _ = voc_root
    with pytest.raises(DataError, match="train_aug_typo.txt"):
        voc_split(root, "train_aug_typo")


def test_load_splits_synthetic():
    s = load_splits(SyntheticDataConfig(n_train=5, n_val=3))
    assert s.pseudo is s.train and len(s.val) == 3 and s.class_names == CLASS_NAMES
