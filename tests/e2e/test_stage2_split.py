"""Stage 2's own training split: pseudo labels written for images without masks, and studies
whose stage-2 training images are also scored are refused."""

import numpy as np
import pytest
import torch
from helpers import write_study
from PIL import Image

from bench.cli import main
from bench.study import StudyError, load_study
from tkp_pcl.config import ModelConfig, PseudoConfig, VOCDataConfig
from tkp_pcl.data import DataError, Split, load_splits, seg_train_split_name, unscored
from tkp_pcl.model import PatchClassifier
from tkp_pcl.pseudo import make_pseudo_labels


def test_pseudo_labels_of_a_split_without_masks(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(40, 56), (48, 32), (33, 61)]
    images = [rng.integers(0, 255, (*s, 3), dtype=np.uint8) for s in shapes]

    def no_mask(i):
        raise FileNotFoundError("this split has no masks")

    labels = np.zeros((3, 4), bool)
    labels[:, 0], labels[0, 2], labels[1, 1], labels[2, 3] = True, True, True, True
    split = Split("nomask", ("bg", "a", "b", "c"), ["x0", "x1", "x2"], images.__getitem__, no_mask, labels)
    torch.manual_seed(0)
    model = PatchClassifier(ModelConfig(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2), 4)
    res = make_pseudo_labels(model, unscored(split), PseudoConfig(workers=2), out_dir=tmp_path, progress=False)
    assert res.conf.sum() == 0 and res.conf_crf.sum() == 0  # nothing scored, no mask read
    for k, name in enumerate(split.ids):
        for sub in ("pseudo", "pseudo_crf"):
            lab = np.asarray(Image.open(tmp_path / sub / f"{name}.png"))
            assert lab.shape == shapes[k]
            assert set(np.unique(lab).tolist()) <= set(np.flatnonzero(labels[k]).tolist())


def test_voc_stage2_split_defaults_to_train_aug(voc_root):
    root, _ = voc_root
    cfg = VOCDataConfig(root=str(root))
    s = load_splits(cfg)
    assert seg_train_split_name(cfg) == "train_aug" and s.seg_train is s.train and len(s.seg_train) == 4
    assert "2009_000001" in s.seg_train.ids and "2009_000001" not in s.pseudo.ids
    assert load_splits(VOCDataConfig(root=str(root), seg_train_split="train")).seg_train is not None


@pytest.mark.parametrize(
    "data,message",
    [
        ({"seg_train_split": "val"}, "data.seg_train_split: 1 images also in data.val_split 'val' (e.g. 2008_000002)"),
        (
            {"train_split": "val", "pseudo_split": "val"},
            "data.seg_train_split (= data.train_split 'val'): 1 images also in data.val_split 'val'",
        ),
    ],
)
def test_stage2_training_on_scored_images_is_refused(tmp_path, monkeypatch, capsys, voc_root, data, message):
    root, _ = voc_root
    path = write_study(tmp_path / "leak.yaml", data={"kind": "voc", "root": str(root), **data})
    with pytest.raises(StudyError, match="leak.yaml: "):
        load_study(path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err, err
    no_stage2 = write_study(
        tmp_path / "ok.yaml", {"base.segment.enabled": False}, data={"kind": "voc", "root": str(root), **data}
    )
    load_study(no_stage2)  # pseudo labels scored on val are allowed (ViT-PCM's val numbers)


def test_voc_image_without_a_mask_gets_labels_from_its_xml_and_a_pseudo_label(voc_root, tmp_path):
    from tkp_pcl.data.voc import voc_split

    root, _ = voc_root
    Image.fromarray(np.full((30, 44, 3), 120, np.uint8)).save(root / "JPEGImages" / "2010_000005.jpg")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "2010_000005.xml").write_text(
        "<annotation><filename>2010_000005.jpg</filename><object><name>dog</name><difficult>0</difficult>"
        "</object><object><name>person</name></object><object><name>dog</name></object></annotation>"
    )
    lst = root / "ImageSets" / "Segmentation" / "train_aug.txt"
    lst.write_text(lst.read_text() + "2010_000005\n")
    split = voc_split(root, "train_aug")
    k = split.ids.index("2010_000005")
    assert sorted(np.flatnonzero(split.all_labels()[k])) == [0, 12, 15]  # background, dog, person
    assert sorted(np.flatnonzero(split.all_labels()[0])) == [0, 5, 9, 11, 15]  # from the real image's mask
    model = PatchClassifier(ModelConfig(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2), 21)
    make_pseudo_labels(model, unscored(split.subset([k])), PseudoConfig(workers=1), out_dir=tmp_path, progress=False)
    assert np.asarray(Image.open(tmp_path / "pseudo_crf" / "2010_000005.png")).shape == (30, 44)
    (root / "Annotations" / "2010_000005.xml").write_text(
        "<annotation><object><name>unicorn</name></object></annotation>"
    )
    with pytest.raises(DataError, match="2010_000005.xml names unknown classes"):
        voc_split(root, "train_aug").all_labels()
