"""Pseudo labels at an inference size of their own (``pseudo.input_size``): position embeddings
resampled to the larger grid, nothing changed at the training size."""

import numpy as np
import pytest
import timm
import torch
from helpers import write_study
from pydantic import ValidationError

from tkp_pcl.config import LossConfig, MethodConfig, ModelConfig, PseudoConfig, SyntheticDataConfig, TrainConfig
from tkp_pcl.data import IGNORE_INDEX, load_splits
from tkp_pcl.imaging import resize_image
from tkp_pcl.model import PatchClassifier
from tkp_pcl.pseudo import make_pseudo_labels, predict_class_maps
from tkp_pcl.stage1 import train_stage1

SMALL = ModelConfig(img_size=48, patch_size=8, depth=2, embed_dim=64, num_heads=2, proj_dim=16)


def test_output_at_img_size_is_that_of_a_fixed_size_vit():
    """dynamic_img_size changes nothing at img_size: same tokens as timm's fixed-size ViT with the
    same weights, bit for bit, in eval and in training mode (same dropout draws)."""
    m = PatchClassifier(SMALL.model_copy(update={"hv_bilstm": True, "lstm_hidden": 8}), 5)
    fixed = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=48, patch_size=8, depth=2, embed_dim=64, num_heads=2
    )
    fixed.load_state_dict(m.backbone.state_dict())
    x = torch.rand(2, 3, 48, 48)
    for train in (False, True):
        m.train(train), fixed.train(train)
        torch.manual_seed(1)
        a = m.backbone.forward_features(x)
        torch.manual_seed(1)
        b = fixed.forward_features(x)
        assert torch.equal(a, b)
    assert m(x).grid == m.grid == (6, 6)


def test_other_sizes_run_on_their_own_grid():
    m = PatchClassifier(SMALL.model_copy(update={"hv_bilstm": True, "lstm_hidden": 8}), 5).eval()
    out = m(torch.randint(0, 255, (2, 3, 48, 80), dtype=torch.uint8))  # not square: h and w kept apart
    assert out.grid == (6, 10) and out.probs.shape == (2, 60, 5) and out.embeddings.shape == (2, 60, 16)
    with pytest.raises(ValueError, match="50x48 px are not a whole number of 8x8 px patches"):
        m(torch.rand(1, 3, 50, 48))


def test_input_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(
        ValidationError, match=r"pseudo.input_size \(100\) must be a multiple of model.patch_size \(8\)"
    ):
        MethodConfig(model=SMALL, pseudo=PseudoConfig(input_size=100))
    MethodConfig(model=SMALL, pseudo=PseudoConfig(input_size=120))


def test_study_names_the_yaml_path(tmp_path):
    from bench.study import StudyError, load_study

    path = write_study(tmp_path / "s.yaml", {"base.pseudo.input_size": 100})
    with pytest.raises(StudyError, match=r"s.yaml: base: pseudo.input_size \(100\) must be a multiple"):
        load_study(path)


def test_trained_at_48_labels_at_120(tmp_path):
    """A model trained at 48 px (monitor at 120 px too) makes pseudo labels from a 15x15 grid,
    at each image's own resolution, and they are scored."""
    splits = load_splits(SyntheticDataConfig(n_train=64, n_val=8, size=48, min_size=10, max_size=32))
    cfg = MethodConfig(
        model=SMALL,
        loss=LossConfig(pce_warmup_epochs=0),
        train=TrainConfig(epochs=1, batch_size=32, monitor_images=8, seed=0),
        pseudo=PseudoConfig(input_size=120),
    )
    cfg.pseudo.crf.enabled = False
    res = train_stage1(cfg, splits, progress=False)
    assert np.isfinite(res.history[-1]["monitor_pseudo_miou"])
    split = splits.pseudo.subset(range(6))
    labels = torch.from_numpy(split.all_labels())
    batch = torch.stack([resize_image(split.load_image(i), 120) for i in range(len(split))])
    maps = predict_class_maps(res.model, batch, labels)
    assert maps.shape == (6, split.num_classes, 15, 15)
    assert torch.all(maps[~labels] == 0)
    out = make_pseudo_labels(res.model, split, cfg.pseudo, out_dir=tmp_path, progress=False)
    masks = [split.load_mask(i) for i in range(len(split))]
    assert out.conf.sum() == sum(int((m != IGNORE_INDEX).sum()) for m in masks)
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "pseudo" / f"{split.ids[0]}.png")).shape == masks[0].shape
    same = make_pseudo_labels(res.model, split, PseudoConfig(input_size=48, crf=cfg.pseudo.crf), progress=False)
    default = make_pseudo_labels(res.model, split, PseudoConfig(crf=cfg.pseudo.crf), progress=False)
    assert np.array_equal(same.conf, default.conf)  # input_size = img_size is the default
    assert not np.array_equal(out.conf, default.conf)  # 120 px is a different prediction


def test_make_pseudo_labels_checks_the_patch_when_the_config_cannot():
    """With ``model.patch_size: null`` (timm's own) the config cannot check; the run does."""
    m = PatchClassifier(SMALL, 7)
    split = load_splits(SyntheticDataConfig(n_train=2, n_val=2, size=48)).pseudo
    with pytest.raises(ValueError, match=r"pseudo.input_size \(60\) must be a multiple of the patch size \(8\)"):
        make_pseudo_labels(m, split, PseudoConfig(input_size=60), progress=False)
