import numpy as np
import pytest
import torch

from tkp_pcl.config import ModelConfig, SegmentConfig, SyntheticDataConfig
from tkp_pcl.data import load_splits, save_label_png
from tkp_pcl.metrics import miou
from tkp_pcl.model import Segmenter
from tkp_pcl.stage2 import (
    PseudoLabelDataset,
    Stage2Inputs,
    evaluate_segmentation,
    make_optimizer,
    predict,
    train_segmentation,
)

SMALL = ModelConfig(img_size=48, patch_size=8, depth=2, embed_dim=64, num_heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    splits = load_splits(SyntheticDataConfig(n_train=96, n_val=24, size=48, min_size=10, max_size=32))
    labels = tmp_path_factory.mktemp("labels")
    for i, name in enumerate(splits.train.ids):  # true masks as "pseudo labels": an upper bound
        save_label_png(splits.train.load_mask(i), labels / f"{name}.png")
    return splits, labels


def test_dataset_crops_pads_with_ignore_and_keeps_pairs_aligned(data):
    splits, labels = data
    torch.manual_seed(0)
    ds = PseudoLabelDataset(splits.train, labels, size=48, scale=(0.5, 0.5))
    img, lab = ds[0]
    assert img.shape == (3, 48, 48) and img.dtype == torch.uint8 and lab.shape == (48, 48)
    assert (lab == 255).any() and (img[:, lab == 255] == 0).all()  # padding, not image, is ignored
    assert set(lab.unique().tolist()) <= set(range(7)) | {255}
    ds = PseudoLabelDataset(splits.train, labels, size=48, scale=(0.4, 1.6))
    for i in range(40):  # crops of images smaller and larger than the crop, any offset
        img, lab = ds[i % len(ds)]
        assert img.shape == (3, 48, 48) and lab.shape == (48, 48)


def test_training_on_labels_beats_an_untrained_network(data):
    splits, labels = data
    cfg = SegmentConfig(enabled=True, epochs=4, batch_size=16, lr=2e-3)
    torch.manual_seed(0)
    untrained = miou(evaluate_segmentation(Segmenter(cfg, SMALL, 7), splits.val, cfg, "cpu")[0])[0]
    res = train_segmentation(
        cfg, SMALL, Stage2Inputs(splits.train, labels, splits.val, device="cpu"), keep_examples=2, progress=False
    )
    trained = miou(res.conf)[0]
    assert trained > untrained + 0.1, (untrained, trained)
    assert res.history[-1]["seg_loss"] < res.history[0]["seg_loss"]
    assert len(res.examples) == 2 and res.examples[0]["pseudo"].shape == (48, 48)


def test_multiscale_flip_inference_and_torchvision_deeplab():
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    cfg = SegmentConfig(eval_scales=[0.75, 1.0, 1.5], eval_flip=True)
    m = Segmenter(cfg, SMALL, 5).eval()
    p = predict(m, img, cfg.eval_scales, cfg.eval_flip, "cpu")
    assert p.shape == (5, 37, 53)
    torch.testing.assert_close(p.sum(0), torch.full((37, 53), 6.0))  # 3 scales x 2 flips
    dl = Segmenter(SegmentConfig(model="deeplabv3_mobilenet_v3_large"), SMALL, 5).eval()
    assert predict(dl, img, [1.0], False, "cpu").shape == (5, 37, 53)


def test_channels_last_deeplab_trains_and_compile_matches_eager(data):
    splits, labels = data
    small = splits.train.subset(range(16))
    cfg = SegmentConfig(model="deeplabv3_mobilenet_v3_large", channels_last=True, epochs=1, batch_size=8, crop_size=48)
    inputs = Stage2Inputs(small, labels, splits.val.subset(range(4)), device="cpu")
    res = train_segmentation(cfg, SMALL, inputs, progress=False)
    assert np.isfinite(res.history[0]["seg_loss"]) and res.conf.sum() == 4 * 48 * 48
    vit = SegmentConfig(epochs=1, batch_size=8)
    eager = train_segmentation(vit, SMALL, inputs, progress=False)
    compiled = train_segmentation(vit.model_copy(update={"compile": True}), SMALL, inputs, progress=False)
    assert compiled.history[0]["seg_loss"] == pytest.approx(eager.history[0]["seg_loss"], rel=1e-3)


class ColourThreshold(torch.nn.Module):
    """A hand-made per-pixel 'network': class 1 where red > 0.5, class 2 where blue > 0.5
    (red first), else background; records the input sizes it was called at."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        red, blue = x[:, 0] > 0.5, x[:, 2] > 0.5
        cls = torch.where(red, 1, torch.where(blue, 2, 0))
        return torch.nn.functional.one_hot(cls, 3).permute(0, 3, 1, 2).float() * 20


def _stripes_image():
    """A 500 x 375 (W x H) image: a red block, 2-px blue stripes (lost by any squashing)."""
    img = np.zeros((375, 500, 3), np.uint8)
    mask = np.zeros((375, 500), np.uint8)
    img[40:300, 30:200, 0], mask[40:300, 30:200] = 230, 1
    for x in range(250, 480, 6):
        img[100:360, x : x + 2, 2], mask[100:360, x : x + 2] = 220, 2
    return img, mask


def test_evaluation_at_the_images_own_resolution_and_aspect():
    from tkp_pcl.data.split import Split

    img, mask = _stripes_image()
    net = ColourThreshold()
    model = Segmenter(SegmentConfig(), SMALL, 3, net=net).eval()
    cfg = SegmentConfig(eval_scales=[1.0], eval_flip=True)
    split = Split.in_memory("hand", ("background", "red", "blue"), ["a"], img[None], mask[None])
    conf, examples = evaluate_segmentation(model, split, cfg, "cpu", keep_examples=1)
    assert net.sizes == [(375, 500), (375, 500)]  # the image itself and its mirror, no squashing
    assert conf.sum() == 375 * 500 and np.trace(conf) == 375 * 500  # every pixel scored and right
    np.testing.assert_array_equal(examples[0]["pseudo"], mask)
    net.sizes.clear()
    p = predict(model, img, [0.5, 1.0, 1.5], True, "cpu")
    assert p.shape == (3, 375, 500)
    assert net.sizes[::2] == [(188, 250), (375, 500), (562, 750)]  # aspect kept at every scale
    assert (p.argmax(0).numpy() == mask).mean() > 0.97


def test_sgd_with_a_10x_head_and_deeplabv3_resnet101(data):
    cfg = SegmentConfig(model="deeplabv3_resnet101", optimizer="sgd", lr=0.01, momentum=0.9, head_lr_mult=10)
    model = Segmenter(cfg, SMALL, 5)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD) and [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    assert opt.param_groups[0]["momentum"] == 0.9
    head = {id(p) for p in model.net.net.classifier.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert len(model.net.net.backbone.layer3) == 23  # ResNet-101
    assert predict(model.eval(), np.zeros((37, 53, 3), np.uint8), [1.0], False, "cpu").shape == (5, 37, 53)
    splits, labels = data
    vit = SegmentConfig(optimizer="sgd", lr=0.01, head_lr_mult=10, epochs=1, batch_size=8)
    inputs = Stage2Inputs(splits.train.subset(range(16)), labels, splits.val.subset(range(2)), device="cpu")
    res = train_segmentation(vit, SMALL, inputs, progress=False)
    assert np.isfinite(res.history[0]["seg_loss"]) and res.conf.sum() == 2 * 48 * 48
    assert make_optimizer(Segmenter(SegmentConfig(), SMALL, 5), SegmentConfig()).__class__ is torch.optim.AdamW
