"""ViT-PCM's schedule: frozen warm-up, last-N blocks, Adam vs AdamW, classifier L2, dropouts."""

import pytest
import torch

from tkp_pcl.config import LossConfig, MethodConfig, ModelConfig, PoolingConfig, SyntheticDataConfig, TrainConfig
from tkp_pcl.data import load_splits
from tkp_pcl.model import HVBiLSTM, PatchClassifier
from tkp_pcl.stage1 import checkpoint, stage1_loss, train_stage1
from tkp_pcl.stage1.schedule import build_optimizer, phase_of, set_trainable

SMALL = ModelConfig(
    img_size=32,
    patch_size=8,
    depth=2,
    embed_dim=32,
    num_heads=2,
    proj_dim=8,
    hv_bilstm=True,
    lstm_hidden=8,
    lstm_dropout=0.2,
)


def vitpcm_cfg(epochs=2) -> MethodConfig:
    return MethodConfig(
        model=SMALL,
        pooling=PoolingConfig(kind="max"),
        loss=LossConfig(eq_form="vitpcm", eq_crop_prob=0.5, pce_weight=0.0, cls_l2=0.01),
        train=TrainConfig(
            epochs=epochs,
            batch_size=10,
            lr=1e-3,
            frozen_epochs=1,
            frozen_lr=1e-2,
            trainable_blocks=1,
            optimizer="adam",
            color_jitter=True,
            monitor_images=8,
        ),
    )


def frozen_names(model) -> list[str]:
    """The parameters that must never change with trainable_blocks=1 on a 2-block backbone."""
    return [
        n
        for n, _ in model.named_parameters()
        if n.startswith("backbone.") and not (n.startswith("backbone.blocks.1.") or n.startswith("backbone.norm."))
    ]


def test_set_trainable_and_optimizers():
    tc = TrainConfig(frozen_epochs=1, epochs=3, trainable_blocks=1, optimizer="adam", lr=1e-4, frozen_lr=1e-3)
    model = PatchClassifier(SMALL, 5)
    assert [phase_of(e, tc) for e in range(3)] == ["frozen", "main", "main"]
    set_trainable(model, "frozen", tc)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert all(p.requires_grad for p in model.condition.parameters())
    opt = build_optimizer(model, "frozen", tc)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["weight_decay"] == 0
    set_trainable(model, "main", tc)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable and all(n.startswith(("backbone.blocks.1.", "backbone.norm.")) for n in trainable)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in frozen_names(model))
    assert build_optimizer(model, "main", tc).param_groups[0]["lr"] == 1e-4
    default = TrainConfig()
    set_trainable(model, "main", default)
    assert all(p.requires_grad for p in model.parameters())
    opt = build_optimizer(model, "main", default)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == default.weight_decay
    with pytest.raises(ValueError, match="frozen_epochs"):
        TrainConfig(epochs=2, frozen_epochs=2)


def test_l2_term_equals_its_hand_value():
    cfg = vitpcm_cfg()
    model = PatchClassifier(SMALL, 5)
    images = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([[1.0, 1, 0, 0, 0]]).repeat(6, 1)
    terms = stage1_loss(model, images, labels, cfg, torch.Generator().manual_seed(0), use_pce=False)
    w = model.classifier.weight.detach()
    assert terms["loss_l2"].item() == pytest.approx(0.01 * (w**2).sum().item(), rel=1e-6)
    total = terms["loss_cls"] + terms["loss_eq"] + terms["loss_l2"]
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert terms["loss_eq"] > 0 and terms["loss_pce"] == 0


def test_hv_bilstm_dropout_only_in_training():
    lstm = HVBiLSTM(8, 2, dropout=0.5)
    x = torch.randn(2, 3, 3, 8)
    lstm.eval()
    assert torch.equal(lstm(x), lstm(x))
    lstm.train()
    assert not torch.equal(lstm(x), lstm(x))


@pytest.fixture(scope="module")
def splits():
    return load_splits(SyntheticDataConfig(n_train=40, n_val=8, size=32, min_size=8, max_size=20))


def test_frozen_parameters_stay_bit_identical_and_resume_continues(splits, tmp_path):
    """ViT-PCM's recipe end to end: 1 frozen epoch (the whole backbone unchanged), then only the
    last block + norm train; a run killed after the frozen epoch resumes into the main phase with
    a fresh optimizer and gives the uninterrupted run's numbers."""
    torch.manual_seed(0)
    init = PatchClassifier(SMALL, splits.train.num_classes)
    before = {n: p.detach().clone() for n, p in init.named_parameters()}
    after_frozen = {}

    def snapshot(epoch, metrics):
        if epoch == 0:
            after_frozen.update({n: p.detach().clone() for n, p in init.named_parameters()})

    full = train_stage1(vitpcm_cfg(), splits, progress=False, model=init, on_epoch_end=snapshot)
    backbone = [n for n in before if n.startswith("backbone.")]
    assert all(torch.equal(after_frozen[n], before[n]) for n in backbone)
    assert not torch.equal(after_frozen["classifier.weight"], before["classifier.weight"])
    params = dict(full.model.named_parameters())
    assert all(torch.equal(params[n], before[n]) for n in frozen_names(full.model))
    assert not torch.equal(params["backbone.blocks.1.mlp.fc1.weight"], before["backbone.blocks.1.mlp.fc1.weight"])
    h = full.history
    assert h[0]["lr"] == pytest.approx(1e-2) and h[1]["loss_l2"] > 0 and h[1]["loss_eq"] > 0

    def die_after_first(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt

    ck = tmp_path / "s1.ckpt"
    with pytest.raises(KeyboardInterrupt):
        torch.manual_seed(0)
        train_stage1(
            vitpcm_cfg(),
            splits,
            progress=False,
            checkpoint_path=ck,
            on_epoch_end=die_after_first,
            model=PatchClassifier(SMALL, splits.train.num_classes),
        )
    assert len(checkpoint.load(ck).history) == 1
    torch.manual_seed(0)
    resumed = train_stage1(
        vitpcm_cfg(), splits, progress=False, checkpoint_path=ck, model=PatchClassifier(SMALL, splits.train.num_classes)
    )
    assert resumed.history[1]["loss"] == pytest.approx(h[1]["loss"], rel=1e-5)
    assert all(torch.equal(p, params[n]) for n, p in resumed.model.named_parameters())


def test_colour_jitter_with_the_flip_form_is_reproducible():
    cfg = MethodConfig(model=SMALL, train=TrainConfig(color_jitter=True))
    model = PatchClassifier(SMALL, 5).eval()  # no dropout: only the jitter draws vary
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([[1.0, 0, 1, 0, 0]]).repeat(4, 1)
    a = stage1_loss(model, images, labels, cfg, torch.Generator().manual_seed(0), use_pce=True)
    b = stage1_loss(model, images, labels, cfg, torch.Generator().manual_seed(0), use_pce=True)
    c = stage1_loss(model, images, labels, cfg, torch.Generator().manual_seed(1), use_pce=True)
    assert a["loss"].item() == b["loss"].item() != c["loss"].item()
    assert all(torch.isfinite(v) for v in a.values())
